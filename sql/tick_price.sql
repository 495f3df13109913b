-- Average bid of a currency pair over the next hour, from its ticks in the current hour so far and
-- its six previous hourly averages (looked up in the hourly table). Benchmark pipeline 2 (tick).
-- name: tick_price
-- model: ../models/tick_price.onnx
-- task: regression
-- params: pair VARCHAR, ts TIMESTAMP
-- inputs: bid_h0, bid_h1, bid_h2, bid_h3, bid_h4, bid_h5, bid_h6
-- delta: 0.0005

SELECT AVG(bid) AS bid_h0
FROM ticks
WHERE pair = $pair AND ts >= date_trunc('hour', $ts) AND ts < $ts;

SELECT avg_bid AS bid_h1 FROM tick_hours WHERE pair = $pair AND hour = date_trunc('hour', $ts) - INTERVAL 1 HOUR;
SELECT avg_bid AS bid_h2 FROM tick_hours WHERE pair = $pair AND hour = date_trunc('hour', $ts) - INTERVAL 2 HOUR;
SELECT avg_bid AS bid_h3 FROM tick_hours WHERE pair = $pair AND hour = date_trunc('hour', $ts) - INTERVAL 3 HOUR;
SELECT avg_bid AS bid_h4 FROM tick_hours WHERE pair = $pair AND hour = date_trunc('hour', $ts) - INTERVAL 4 HOUR;
SELECT avg_bid AS bid_h5 FROM tick_hours WHERE pair = $pair AND hour = date_trunc('hour', $ts) - INTERVAL 5 HOUR;
SELECT avg_bid AS bid_h6 FROM tick_hours WHERE pair = $pair AND hour = date_trunc('hour', $ts) - INTERVAL 6 HOUR;
