-- Fare of a new taxi trip, from how busy and how pricey its pickup zone was in the last hour and
-- how many trips ended in its drop-off zone in the last 30 minutes. Benchmark pipeline 1 (trips).
-- name: trips_fare
-- model: ../models/trips_fare.onnx
-- task: regression
-- params: pickup_zone INTEGER, dropoff_zone INTEGER, pickup_time TIMESTAMP, distance DOUBLE, passengers INTEGER
-- inputs: pickups_1h, avg_fare_1h, dropoffs_30m, distance, passengers
-- delta: 1.0
-- fill: avg_fare_1h=0

SELECT COUNT(*) AS pickups_1h, AVG(fare) AS avg_fare_1h
FROM trips
WHERE pickup_zone = $pickup_zone
  AND pickup_time >= $pickup_time - INTERVAL 1 HOUR AND pickup_time < $pickup_time;

SELECT COUNT(*) AS dropoffs_30m
FROM trips
WHERE dropoff_zone = $dropoff_zone
  AND dropoff_time >= $pickup_time - INTERVAL 30 MINUTE AND dropoff_time < $pickup_time;

SELECT $distance AS distance, $passengers AS passengers;
