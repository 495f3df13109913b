-- Whether an ad click leads to an app download, from how much its IP clicked over the last day:
-- in all, on the same app, and on the same app from the same OS (click farms hammer one app from
-- one device type). Benchmark pipeline 5 (fraud, TalkingData AdTracking).
-- name: fraud_click
-- model: ../models/fraud_click.onnx
-- task: classification
-- params: ip INTEGER, app INTEGER, os INTEGER, click_time TIMESTAMP
-- inputs: ip_clicks_1d, ip_app_clicks_1d, ip_app_os_clicks_1d, app, os, hour

SELECT COUNT(*) AS ip_clicks_1d
FROM clicks
WHERE ip = $ip AND click_time >= $click_time - INTERVAL 1 DAY AND click_time < $click_time;

SELECT COUNT(*) AS ip_app_clicks_1d
FROM clicks
WHERE ip = $ip AND app = $app AND click_time >= $click_time - INTERVAL 1 DAY AND click_time < $click_time;

SELECT COUNT(*) AS ip_app_os_clicks_1d
FROM clicks
WHERE ip = $ip AND app = $app AND os = $os
  AND click_time >= $click_time - INTERVAL 1 DAY AND click_time < $click_time;

SELECT $app AS app, $os AS os, hour($click_time) AS hour;
