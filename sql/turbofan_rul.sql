-- Remaining useful life (in flight cycles) of a turbofan engine, from the averages of nine sensors
-- over one of its flights. Benchmark pipeline 4 (turbofan).
-- name: turbofan_rul
-- model: ../models/turbofan_rul.onnx
-- task: regression
-- params: engine INTEGER, cycle INTEGER
-- inputs: t24, t30, t50, p30, ps30, phi, bpr, w31, w32
-- delta: 17

SELECT AVG(t24) AS t24, AVG(t30) AS t30, AVG(t50) AS t50,
       AVG(p30) AS p30, AVG(ps30) AS ps30, AVG(phi) AS phi,
       AVG(bpr) AS bpr, AVG(w31) AS w31, AVG(w32) AS w32
FROM turbofan
WHERE engine = $engine AND cycle = $cycle;
