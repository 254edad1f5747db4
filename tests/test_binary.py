"""Binary classifiers that answer one score per row ([batch, 1]: a single logit, or a sigmoid
probability), end to end: the class is score > 0 (logit) or > 0.5 (probability), and every
comparison with the original (verify, bench, the agreement monitors) uses that rule, not an
argmax over one column (always 0: every exit would "agree")."""

import numpy as np
import pytest

import exitc
from exitc.monitor import AgreementMonitor
from exitc.predictions import predicted_classes

from synthetic import binary_cnn, compile_on_noise



def full_depth_twin(path: str, engine: str):
    if engine == "cpp":
        from exitc.cpp_runtime import CppExitModel

        return CppExitModel(path, full_depth=True)
    from exitc.runtime import ExitModel

    return ExitModel(path, full_depth=True)


@pytest.fixture(scope="module", params=[False, True], ids=["logit", "sigmoid"])
def compiled(request, tmp_path_factory):
    sigmoid = request.param
    tmp = tmp_path_factory.mktemp("binary")
    path, res, x, ref = compile_on_noise(binary_cnn(sigmoid), tmp)
    return sigmoid, path, res, x, ref


def test_binary_artifact_answers_one_score_and_thresholds_it(compiled):
    sigmoid, path, res, x, ref = compiled
    m = exitc.load(path, engine="python")
    assert m.manifest["num_classes"] == 1
    assert m.manifest["prediction_kind"] == ("probabilities" if sigmoid else "logits")
    assert res.plan.exits, "a balanced binary CNN has an exit worth taking at 0.9"
    want = predicted_classes(ref, sigmoid)
    assert 0.3 < want.mean() < 0.7
    # verify counted agreement by the threshold: an argmax over one column would say 1.0
    assert 0.85 < res.verification.agreement < 1.0
    for engine in ("python", "cpp"):
        try:
            model = exitc.load(path, engine=engine)
        except exitc.ExitcError:
            if engine == "cpp":
                continue  # libexitc not built: tests/test_cpp_runtime.py says so
            raise
        outs, idx = model.run({"x": x})
        assert outs[0].shape == (len(x), 1)
        early = idx < model.num_exits
        assert 0 < early.sum() < len(x) or early.all()
        assert (predicted_classes(outs[0], sigmoid) == want).mean() > 0.85
        if sigmoid:
            assert ((outs[0] >= 0) & (outs[0] <= 1)).all()  # exits answer probabilities too
        full = full_depth_twin(path, engine).run({"x": x})[0][0]
        np.testing.assert_allclose(full, ref, rtol=1e-5, atol=1e-5)


def test_binary_agreement_monitor_counts_by_the_threshold(compiled):
    sigmoid, path, _, x, ref = compiled
    model = exitc.load(path, engine="python")
    monitor = AgreementMonitor(model, sample_rate=1.0, seed=0)
    outs, idx = monitor.run({"x": x})
    early = idx < model.num_exits
    wrong = predicted_classes(outs[0], sigmoid) != predicted_classes(ref, sigmoid)
    rep = monitor.report()
    assert sum(rep.sampled) == early.sum()
    assert sum(rep.disagreements) == int((wrong & early).sum()) > 0
