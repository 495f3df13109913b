-- Whether a vibration segment shows rotor imbalance, from the mean absolute level of each of the
-- 8 channels over the segment (tachometer, underhang and overhang bearing accelerometers in three
-- axes, microphone). Benchmark pipeline 6 (bearing, MaFaulDa).
-- name: bearing_imbalance
-- model: ../models/bearing_imbalance.onnx
-- task: classification
-- params: machine INTEGER, segment INTEGER
-- inputs: tachometer_abs, underhang_axial_abs, underhang_radial_abs, underhang_tangential_abs, overhang_axial_abs, overhang_radial_abs, overhang_tangential_abs, microphone_abs

SELECT AVG(abs(tachometer)) AS tachometer_abs,
       AVG(abs(underhang_axial)) AS underhang_axial_abs,
       AVG(abs(underhang_radial)) AS underhang_radial_abs,
       AVG(abs(underhang_tangential)) AS underhang_tangential_abs,
       AVG(abs(overhang_axial)) AS overhang_axial_abs,
       AVG(abs(overhang_radial)) AS overhang_radial_abs,
       AVG(abs(overhang_tangential)) AS overhang_tangential_abs,
       AVG(abs(microphone)) AS microphone_abs
FROM vibrations
WHERE machine = $machine AND segment = $segment;
