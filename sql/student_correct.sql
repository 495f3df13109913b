-- Whether a student answers a question correctly, from how the session went: time taken, hovering,
-- where they went, and how many distinct objects, rooms and texts they met. Benchmark pipeline 7
-- (student, Kaggle "Predict Student Performance from Game Play").
-- name: student_correct
-- model: ../models/student_correct.onnx
-- task: classification
-- params: session_id BIGINT, question INTEGER
-- inputs: avg_elapsed, sd_elapsed, avg_hover, sd_hover, avg_room_x, sd_room_x, n_fqid, n_room, n_text, question
-- fill: avg_hover=0, sd_hover=0, sd_elapsed=0, avg_room_x=0, sd_room_x=0

SELECT AVG(elapsed_time) AS avg_elapsed, STDDEV(elapsed_time) AS sd_elapsed,
       AVG(hover_duration) AS avg_hover, STDDEV(hover_duration) AS sd_hover,
       AVG(room_coor_x) AS avg_room_x, STDDEV(room_coor_x) AS sd_room_x
FROM game_events
WHERE session_id = $session_id;

SELECT COUNT(DISTINCT fqid) AS n_fqid, COUNT(DISTINCT room_fqid) AS n_room, COUNT(DISTINCT text_fqid) AS n_text
FROM game_events
WHERE session_id = $session_id;

SELECT $question AS question;
