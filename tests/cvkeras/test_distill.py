"""`cvkeras distill`: the distillation loss, the train step, bad input, and the command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cvkeras.cli import app
from tests.support.cli import invoke
from tests.support.shapes import write_shapes


def _probs(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype("float32")


def test_kd_loss_is_zero_for_equal_predictions_and_grows_with_disagreement():
    from cvkeras.search.distill import kd_loss, soften

    rng = np.random.default_rng(0)
    p = _probs(rng.normal(size=(4, 5)))
    q = _probs(rng.normal(size=(4, 5)) * 3)
    assert np.allclose(kd_loss(p, p, 4.0).numpy(), 0.0, atol=1e-5)
    assert (kd_loss(p, q, 4.0).numpy() > 1e-3).all()
    assert np.allclose(soften(p, 1.0)[0].numpy(), p, atol=1e-5)  # T = 1 gives the probabilities back
    flat = soften(q, 10.0)[0].numpy()
    assert (flat.max(-1) < q.max(-1)).all()  # a higher temperature softens


def _tiny(size: int, seed: int, classes: int = 3):
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(4, 3, strides=2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(classes, activation="softmax")(x))


def _compiled(model):
    import keras

    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=keras.losses.CategoricalCrossentropy(),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    return model


def test_train_step_with_alpha_one_is_keras_own_step_and_alpha_zero_moves_the_student_to_the_teacher():
    import keras
    import tensorflow as tf

    from cvkeras.search.distill import kd_loss, make_train_step, teacher_view

    rng = np.random.default_rng(1)
    x = tf.constant(rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32"))
    y = tf.constant(np.eye(3, dtype="float32")[rng.integers(0, 3, 8)] * 0.7 + 0.1)  # soft labels (MixUp-like)
    teacher = _tiny(24, 7)  # another input size: the step resizes the student's batch for it
    assert teacher_view(x, teacher).shape == (8, 24, 24, 3)

    plain, distilled = _compiled(_tiny(16, 3)), _compiled(_tiny(16, 3))
    plain.train_on_batch(x, y)
    distilled.train_step = make_train_step(distilled, teacher, 4.0, 1.0)
    distilled.train_on_batch(x, y)
    for a, b in zip(plain.get_weights(), distilled.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    student = _compiled(_tiny(16, 3))
    student.train_step = make_train_step(student, teacher, 2.0, 0.0)
    p_t = teacher(teacher_view(x, teacher))
    before = float(tf.reduce_mean(kd_loss(p_t, student(x), 2.0)))
    for _ in range(15):
        logs = student.train_on_batch(x, y, return_dict=True)
    after = float(tf.reduce_mean(kd_loss(p_t, student(x), 2.0)))
    assert after < 0.5 * before and np.isfinite(logs["loss"])
    assert isinstance(student, keras.Model) and "accuracy" in logs


def test_bad_teacher_settings_are_one_line_errors(tmp_path):
    data = write_shapes(tmp_path / "d", per_class=4, size=32)
    out = tmp_path / "student"
    cases = [
        (["--teacher", str(tmp_path / "nope")], "teacher run directory not found"),
        (["--teacher", str(data)], "config.yaml: missing"),
        ([], "--teacher RUN is required"),
        (["--teacher", str(tmp_path / "nope"), "--student", "resnet5"], "unknown model 'resnet5'"),
        (["--teacher", str(tmp_path / "nope"), "--temperature", "0"], "--temperature must be"),
        (["--teacher", str(tmp_path / "nope"), "--alpha", "1.5"], "--alpha must be"),
    ]
    for extra, message in cases:
        student = [] if "--student" in extra else ["--student", "mobilenet"]
        result = invoke("distill", str(data), *student, *extra, "-o", str(out))
        assert result.exit_code == 2, result.output
        assert "error:" in result.output and message in result.output and "Traceback" not in result.output
        assert not out.exists()


def test_resume_with_another_teacher_is_refused(tmp_path):
    """--resume continues with the recorded teacher; naming another one is an error, nothing is touched."""
    import yaml

    from cvkeras.run.config import FinetuneConfig

    run = tmp_path / "student"
    run.mkdir()
    doc = FinetuneConfig(data=str(tmp_path / "d"), model="mobilenet").to_dict()
    doc["run"] = {"distill": {"teacher": str(tmp_path / "teacher_a"), "temperature": 4.0, "alpha": 0.3}}
    (run / "config.yaml").write_text(yaml.safe_dump(doc))
    before = sorted(p.name for p in run.iterdir())
    result = invoke("distill", "--resume", "-o", str(run), "--teacher", str(tmp_path / "teacher_b"))
    assert result.exit_code == 2, result.output
    assert "was distilled from" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in run.iterdir()) == before


@pytest.mark.slow
def test_distill_end_to_end_through_the_cli(tmp_path):
    import keras

    from cvkeras.models.build import load_model

    data = write_shapes(tmp_path / "shapes", per_class=8, size=40)
    quick = ["--weights", "none", "--batch-size", "8", "--epochs", "1", "--fine-tune-epochs", "1",
             "--steps-per-epoch", "2", "--quiet"]
    teacher = tmp_path / "teacher"  # another input size than the student's; one stage: it only has to exist
    result = invoke("finetune", str(data), "-m", "mobilenet", "--alpha", "0.25", "--image-size", "48", *quick,
                    "--fine-tune-epochs", "0", "--steps-per-epoch", "1", "-o", str(teacher))
    assert result.exit_code == 0, result.output
    student = tmp_path / "student"
    result = invoke("distill", str(data), "--teacher", str(teacher), "--student", "mobilenet", "--width", "0.25",
                    "--image-size", "32", "--temperature", "3", "--alpha", "0.4", "--mixup", "0.2", *quick,
                    "-o", str(student))
    assert result.exit_code == 0, result.output
    assert "Results saved to" in result.output

    # a normal run directory whose best.keras is the float32 student
    model = load_model(student / "best.keras")
    assert model.input_shape == (None, 32, 32, 3) and model.name == "cvkeras_mobilenet"
    assert all(w.dtype == "float32" for w in model.weights)
    import yaml

    doc = yaml.safe_load((student / "config.yaml").read_text())
    assert doc["run"]["distill"]["teacher"] == str(teacher)
    assert doc["run"]["distill"]["temperature"] == 3.0 and doc["run"]["distill"]["alpha"] == 0.4
    assert doc["run"]["distill"]["teacher_image_size"] == [48, 48]
    history = (student / "history.csv").read_text().splitlines()
    assert len(history) == 3
    assert json.loads((student / "metrics.json").read_text())["n"] > 0
    keras.backend.clear_session()

    assert invoke("evaluate", str(student)).exit_code == 0
    exported = invoke("export", str(student), "--format", "onnx")  # TFLite export is the same for any run
    assert exported.exit_code == 0, exported.output
    assert (student / "export" / "model.onnx").is_file()

    # a teacher trained on other classes is refused before anything is written
    other = write_shapes(tmp_path / "other", per_class=4, size=40, classes=("circle", "square"))
    refused = CliRunner().invoke(app, ["distill", str(other), "--teacher", str(teacher), "--student", "mobilenet",
                                       "--width", "0.25", "--image-size", "32", *quick, "-o", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "classes" in refused.output and "labels.txt" in refused.output
    assert not (tmp_path / "x").exists()
