-- Seconds left in a Li-ion cell's current charge, from the mean and spread of what the cell and
-- the charger logged since the charge began, and how long ago that was. Benchmark pipeline 3 (battery).
-- name: battery_rul
-- model: ../models/battery_rul.onnx
-- task: regression
-- params: battery VARCHAR, cycle INTEGER, t DOUBLE
-- inputs: avg_voltage, sd_voltage, avg_current, sd_current, avg_temperature, sd_temperature, avg_charge_current, sd_charge_current, avg_charge_voltage, sd_charge_voltage, elapsed
-- delta: 35

SELECT AVG(voltage) AS avg_voltage, STDDEV(voltage) AS sd_voltage,
       AVG(current) AS avg_current, STDDEV(current) AS sd_current,
       AVG(temperature) AS avg_temperature, STDDEV(temperature) AS sd_temperature,
       AVG(charge_current) AS avg_charge_current, STDDEV(charge_current) AS sd_charge_current,
       AVG(charge_voltage) AS avg_charge_voltage, STDDEV(charge_voltage) AS sd_charge_voltage
FROM charge_readings
WHERE battery = $battery AND cycle = $cycle AND t < $t;

SELECT $t AS elapsed;
