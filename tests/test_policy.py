"""The exit policy: thresholds, simulation and the policy stage on simulated heads with a fixed
cost profile (no timing involved)."""

import numpy as np
import pytest

from exitc.distill import FittedHead, fit_gate
from exitc.options import CompileOptions
from exitc.passes.candidates import Candidate
from exitc.passes.heads import gate_scores, softmax
from exitc.policy import (BATCH1_FORMS, MEDIAN_TOLERANCE, CostModel, Plan, batch1_forms, choose_plan, policy_stage,
                          required_rate, simulate, thresholds_for)
from exitc.profile import Cost, Profile
from exitc.stats import clopper_pearson_lower


def _profile(k=3, batch=32):
    slices = [Cost(1e-4, 1e-3)] * (k + 1)
    return Profile(batch, Cost(4e-4 * (k + 1), 1e-3 * (k + 1)), slices, [Cost(1e-5, 1e-5)] * k, 5e-5)


def _heads(n_fit, n_cert, k=3, classes=4, seed=0, scale=1.0):
    """Heads whose confidence rises with depth and predicts agreement with the original."""
    rng = np.random.default_rng(seed)
    n = n_fit + n_cert
    pred = rng.integers(0, classes, n)
    heads, cert_feats = [], []
    for j in range(k):
        strength = (1.0 + 1.5 * j) * scale
        logits = rng.standard_normal((n, classes))
        logits[np.arange(n), pred] += strength * rng.random(n) * 3
        probs = softmax(logits.astype(np.float32))
        agree = probs.argmax(1) == pred
        w, b = fit_gate(probs[:n_fit], agree[:n_fit])
        cand = Candidate(cut=j + 1, tensor=f"t{j}", side=(), layout="bf", features=classes, row_elements=classes,
                         flops_fraction=(j + 1) / (k + 1))
        # identity "layers": the features are the logits themselves
        layers = [(np.eye(classes, dtype=np.float32), np.zeros(classes, np.float32))]
        heads.append(FittedHead(cand, "linear", layers, w, b, agree[:n_fit], gate_scores(probs[:n_fit], w, b),
                                float(agree[:n_fit].mean()), probs[:n_fit]))
        cert_feats.append(logits[n_fit:].astype(np.float32))
    return heads, cert_feats, pred[n_fit:]


def _true_agreement(plan: Plan, heads, feats, pred):
    exit_at = np.full(len(pred), len(plan.exits))
    for i in reversed(range(len(plan.exits))):
        h = heads[plan.exits[i]]
        probs = softmax(feats[plan.exits[i]])
        if plan.gates:
            w, b = plan.gates[i]
            prev = softmax(feats[plan.exits[i - 1]]) if i and w.size > 3 else None
            s = gate_scores(probs, w, b, prev)
        else:
            s = gate_scores(probs, h.gate_w, h.gate_b)
        exit_at[s >= plan.thresholds[i]] = i
    agree = np.ones(len(pred), bool)
    for i, c in enumerate(plan.exits):
        sel = exit_at == i
        agree[sel] = softmax(feats[c])[sel].argmax(1) == pred[sel]
    return agree.mean()


def test_policy_stage_certifies_and_holds_on_fresh_data():
    heads, cert_feats, cert_pred = _heads(3000, 3000)
    opts = CompileOptions(target_acc=0.95, confidence=0.95, latency_weight=0.25)
    plan = policy_stage(heads, cert_feats, cert_pred, _profile(), opts)
    assert plan.exits, plan.reason
    assert plan.agreement_bound >= 0.95
    assert plan.predicted_cost_batch < plan.original_cost_batch
    assert len(plan.thresholds) == len(plan.exits)
    assert not plan.gates or len(plan.gates) == len(plan.exits)
    # every batch-1 form priced; the chosen one's figures are the plan's, and a form verify
    # switches to brings its own (the report showed 1.00x for a first-exit form chosen there)
    assert set(plan.batch1_predictions) == set(BATCH1_FORMS)
    assert plan.batch1_predictions[plan.batch1] == pytest.approx((plan.predicted_cost_b1, plan.predicted_median_b1))
    plan.use_batch1_form("first_exit")
    assert plan.batch1 == "first_exit"
    assert (plan.predicted_cost_b1, plan.predicted_median_b1) == plan.batch1_predictions["first_exit"]
    assert plan.predicted_cost_b1 != plan.original_cost_b1
    plan.use_batch1_form("original")
    assert plan.predicted_cost_b1 == plan.predicted_median_b1 == plan.original_cost_b1
    # fresh rows from the same distribution: agreement at the target (up to sampling noise)
    _, fresh_feats, fresh_pred = _heads(3000, 20000, seed=0)
    assert _true_agreement(plan, heads, fresh_feats, fresh_pred) >= 0.95 - 0.005


def test_no_exit_when_target_cannot_be_certified():
    heads, cert_feats, cert_pred = _heads(500, 300)
    fit_scores = np.stack([h.oof_score for h in heads], 1)
    fit_agree = np.stack([h.oof_agree for h in heads], 1)
    cert_scores = np.stack([gate_scores(softmax(f), h.gate_w, h.gate_b) for h, f in zip(heads, cert_feats)], 1)
    cert_agree = np.stack([softmax(f).argmax(1) == cert_pred for f in cert_feats], 1)
    plan = choose_plan(fit_scores, fit_agree, cert_scores, cert_agree, _profile(), 0.9999, 0.95)
    assert plan.exits == [] and plan.reason and plan.agreement_bound == 1.0


def test_split_rows_caps_the_fit_split():
    from exitc.analysis import split_rows
    fit, cert = split_rows(1000, 0.7, 0)
    assert len(fit) == 300 and len(cert) == 700
    fit, cert = split_rows(20000, 0.7, 0, max_fit_rows=4000)
    assert len(fit) == 4000 and len(cert) == 16000
    assert not set(fit) & set(cert) and len(set(fit) | set(cert)) == 20000
    fit_small, _ = split_rows(1000, 0.7, 0, max_fit_rows=4000)  # the cap only ever moves rows to certification
    assert len(fit_small) == 300


def test_one_class_calibration_rows_are_called_out():
    from exitc.analysis import one_class_note
    pred = np.zeros(700, np.int64)
    note = one_class_note(pred, "c.npz")
    assert note and "class 0 on 700 of the 700 calibration rows in c.npz" in note
    pred[:6] = 3   # 99.1% one class: still called out
    assert "class 0 on 694 of the 700" in one_class_note(pred, "c.npz")
    pred[:8] = 3   # 98.9%: an imbalanced set, not one class
    assert one_class_note(pred, "c.npz") is None
    assert one_class_note(np.zeros(0, np.int64), "c.npz") is None


def test_repeated_rows_count_once():
    from exitc.analysis import check_rows
    from exitc.data import Dataset
    from exitc.errors import ExitcError
    x = np.random.default_rng(0).standard_normal((700, 4)).astype(np.float32)
    mask = np.ones((700, 2), np.int64)
    assert Dataset({"x": x, "m": mask}, None, "c.npz").distinct_rows == 700
    twice = np.concatenate([x[:350], x[:350]])
    assert Dataset({"x": twice, "m": mask}, None, "c.npz").distinct_rows == 350
    mask2 = mask.copy()
    mask2[350:, 1] = 0   # the copies differ in another input: distinct rows
    assert Dataset({"x": twice, "m": mask2}, None, "c.npz").distinct_rows == 700
    check_rows(Dataset({"x": x}, None, "c.npz"), CompileOptions())
    with pytest.raises(ExitcError, match="700 calibration rows but only 350 distinct.*--target-acc 0.983 at most"):
        check_rows(Dataset({"x": twice}, None, "c.npz"), CompileOptions())


def test_reachable_target_is_the_highest_target_the_rows_allow():
    from dataclasses import replace

    from exitc.analysis import reachable_target, rows_needed
    for opts in (CompileOptions(), CompileOptions(confidence=0.99), CompileOptions(certify_fraction=0.3)):
        for rows in (120, 300, 597, 598, 1000, 3000):
            t = reachable_target(rows, opts)
            assert t is not None and 0.5 < t < 1.0
            assert rows_needed(replace(opts, target_acc=t)) <= rows          # allowed
            assert rows_needed(replace(opts, target_acc=round(t + 0.001, 3))) > rows   # and the highest
    assert reachable_target(598, CompileOptions()) == 0.99
    assert reachable_target(100, CompileOptions()) is None   # certifies nothing above 0.5


def test_median_latency_is_the_path_of_the_median_request():
    from exitc.policy import CostModel

    cm = CostModel(_profile())
    path = np.cumsum([s.at(1) for s in cm.segments([0, 2])])
    # reach: all rows reach segment 0; share reaching segments 1 and 2
    reach = np.array([[1.0, 0.40, 0.20],    # 60% leave at exit 0: the median request leaves there
                      [1.0, 0.60, 0.30],    # 40% by exit 0, 70% by exit 1: it leaves at exit 1
                      [1.0, 0.75, 0.55]])   # 45% leave early: the median request runs to the end
    assert np.allclose(cm.median_latency([0, 2], reach), [path[0], path[1], path[2]])
    # the margin: exactly half (+1%) is not enough
    assert np.isclose(cm.median_latency([0, 2], np.array([[1.0, 0.49, 0.49]]))[0], path[2])


def test_batch1_runs_the_original_where_the_median_request_would_run_to_the_end():
    """Weak heads that take only a third of the rows: the plan cheapens batches but every median
    batch-1 request would pay heads and calls on the whole path. With never_slower, batches keep
    the exits and batch-1 requests run the original."""
    heads, cert_feats, cert_pred = _heads(3000, 3000, scale=0.3)
    # the original costs exactly its slices (as profile.calibrate_slices makes it): a full-depth
    # row pays heads and calls on top
    profile = _profile()
    profile.original = Cost(sum(s.fixed for s in profile.slices), sum(s.per_row for s in profile.slices))
    fit_scores = np.stack([h.oof_score for h in heads], 1)
    fit_agree = np.stack([h.oof_agree for h in heads], 1)
    cert_scores = np.stack([gate_scores(softmax(f), h.gate_w, h.gate_b) for h, f in zip(heads, cert_feats)], 1)
    cert_agree = np.stack([softmax(f).argmax(1) == cert_pred for f in cert_feats], 1)
    for ns in (False, True):
        plan = choose_plan(fit_scores, fit_agree, cert_scores, cert_agree, profile, 0.98, 0.95, never_slower=ns)
        early = 1.0 - plan.exit_fractions[-1]
        if ns:
            assert plan.exits and plan.predicted_cost_batch < plan.original_cost_batch
            assert plan.predicted_median_b1 <= plan.original_cost_b1
            assert plan.batch1 == "original"
        else:
            slow = plan
    assert slow.exits and 1.0 - slow.exit_fractions[-1] < 0.5 and slow.batch1 == "exits"
    assert slow.predicted_median_b1 > slow.original_cost_b1, "the case must have a median request slower at batch 1"


def test_required_rate_is_tight():
    r = required_rate(1000, 0.99, 0.95)
    k = int(round(r * 1000))
    assert clopper_pearson_lower(k, 1000, 0.95) >= 0.99 > clopper_pearson_lower(k - 1, 1000, 0.95)


def test_simulate_first_passing_exit_wins():
    scores = np.array([[0.9, 0.1], [0.2, 0.95], [0.1, 0.1], [0.99, 0.99]], np.float32)
    agree = np.array([[True, False], [False, True], [True, True], [False, True]])
    th = np.array([[0.5, 0.5], [2.0, 2.0]])
    agreement, reach, exit_at = simulate(scores, agree, th)
    assert exit_at[0].tolist() == [0, 1, 2, 0]
    assert agreement[0] == pytest.approx(3 / 4)  # row 3 exits at 0 and disagrees
    assert reach[0].tolist() == pytest.approx([1.0, 0.5, 0.25])
    assert exit_at[1].tolist() == [2, 2, 2, 2] and agreement[1] == 1.0


def test_threshold_family_is_monotone():
    saved = np.array([0.8, 0.5, 0.2])
    mus = np.array([0.0, 0.01, 0.1, 1.0])
    th = thresholds_for(saved, mus)
    assert (th[0] > 1).all()
    assert (np.diff(th[1:], axis=0) <= 0).all()  # larger mu: lower thresholds
    assert (th[2, 0] < th[2, 1] < th[2, 2])  # earlier exits (more saving) get lower thresholds


def test_batch1_forms_first_exit_where_a_cheap_first_exit_takes_a_minority():
    """batch1_forms on hand-made costs: a first exit that costs 1.2% of the original and takes 40%
    of the rows cannot carry the median request, and the deeper exits would make every request
    that runs to the end pay for their heads and calls; the first-exit form (exit 0, then the
    original in one call) keeps the median request within MEDIAN_TOLERANCE and cuts the mean. The
    same exit at 5% of the original is not admitted (the original runs); where it takes 60% the
    cheaper-by-mean of the exits and the first-exit form wins; without never_slower the exits run."""
    def profile(first_cost):
        slices = [Cost(0.0, first_cost)] + [Cost(1e-4, 1e-3)] * 3
        return Profile(1, Cost(3e-4, 3e-3 + first_cost), slices, [Cost(0.0, 0.0)] + [Cost(2e-5, 5e-5)] * 2, 2e-5)

    reach = np.array([[1.0, 0.60, 0.55, 0.52],     # 40% leave at exit 0, 48% early in all
                      [1.0, 0.40, 0.35, 0.30]])    # 60% leave at exit 0
    cm = CostModel(profile(2e-5))                  # first exit: 1.2% of the original at batch 1, every exit 6.6%
    orig = cm.p.original.at(1)
    form, mean, median = batch1_forms(cm, [0, 1, 2], reach)
    first = cm.segments([0, 1, 2])[0].at(1)
    assert BATCH1_FORMS[form[0]] == "first_exit"
    assert np.isclose(mean[0], first + 0.60 * orig) and np.isclose(median[0], first + orig)
    assert median[0] <= orig * (1 + MEDIAN_TOLERANCE) < cm.median_latency([0, 1, 2], reach[:1])[0]
    exits_mean = cm.expected([0, 1, 2], reach[1:], 1)[0]
    assert mean[1] == min(exits_mean, first + 0.40 * orig) and median[1] == first
    form, mean, median = batch1_forms(CostModel(profile(2e-4)), [0, 1, 2], reach[:1])   # 6% of the original
    assert BATCH1_FORMS[form[0]] == "original" and mean[0] == median[0]
    form, _, _ = batch1_forms(cm, [0, 1, 2], reach, never_slower=False)
    assert [BATCH1_FORMS[f] for f in form] == ["exits", "exits"]


def test_fit_cost_charges_each_exit_that_takes_rows(monkeypatch):
    """Exit sets are compared on the fit split with each exit charged FIT_EXIT_PRIOR disagreements:
    an exit whose rows meet the required agreement with no room to spare takes them only without
    the charge."""
    from exitc import policy
    n = 1000
    scores = np.full((n, 1), 0.2, np.float32)
    scores[:610] = 0.99                      # 610 rows leave at any threshold that takes one
    agree = np.ones((n, 1), bool)
    agree[600:] = False                      # 10 of them disagree (agreement 0.99), and every other row
    profile = _profile(k=1)
    charged = policy.fit_cost([0], scores, agree, profile, req=0.99, never_slower=False)
    monkeypatch.setattr(policy, "FIT_EXIT_PRIOR", 0.0)
    uncharged = policy.fit_cost([0], scores, agree, profile, req=0.99, never_slower=False)
    nobody_leaves = float(policy.objective(policy.CostModel(profile), [0], np.ones((1, 2)), 0.25, False)[0])
    assert uncharged < nobody_leaves
    assert charged == nobody_leaves          # the only feasible configuration takes no rows


def test_fit_cost_keeps_perfect_exits_where_certification_allows_no_disagreement():
    """A certification split too small to allow any disagreement (req 1): the charge must not
    rule out an exit that agrees on every fit row, since a perfect certification split certifies
    it; an exit with one disagreement stays out."""
    from exitc import policy
    n = 300
    scores = np.full((n, 1), 0.2, np.float32)
    scores[:290] = 0.99
    agree = np.ones((n, 1), bool)
    profile = _profile(k=1)
    nobody_leaves = float(policy.objective(policy.CostModel(profile), [0], np.ones((1, 2)), 0.25, False)[0])
    assert policy.fit_cost([0], scores, agree, profile, req=1.0, never_slower=False) < nobody_leaves
    agree[5] = False
    assert policy.fit_cost([0], scores, agree, profile, req=1.0, never_slower=False) == nobody_leaves


def test_rows_outlook_prices_larger_calibration_sets():
    """The outlook's first entry is the calibration set as it is (its certification rows and the
    bar they set), larger sets lower the bar, and a lower bar never predicts a slower plan."""
    from exitc import policy
    heads, cert_feats, cert_pred = _heads(1500, 1500)
    opts = CompileOptions(target_acc=0.99, confidence=0.95)
    plan = policy_stage(heads, cert_feats, cert_pred, _profile(), opts)
    assert plan.exits, plan.reason
    out = plan.outlook
    assert [o["calibration_rows"] for o in out] == [3000 * f for f in policy.OUTLOOK_FACTORS]
    assert out[0]["certification_rows"] == plan.n_certify == 1500
    assert out[0]["required_agreement"] == policy.required_rate(1500, 0.99, 0.95)
    bars = [o["required_agreement"] for o in out]
    speedups = [o["fit_speedup_batch"] for o in out]
    assert bars == sorted(bars, reverse=True) and bars[0] > bars[-1]
    assert speedups == sorted(speedups) and speedups[0] > 1.0
    # split_rows' rule: the fit split is capped, the rest certify
    assert out[-1]["certification_rows"] == 12000 - opts.max_fit_rows


def test_fit_speedup_prices_the_configuration_fit_cost_picks():
    """600 of 1000 fit rows leave at exit 0 and agree: at a bar they meet (with the exit's charge
    of half a disagreement) the speedup is the original's cost over that configuration's; at a bar
    they miss only nobody leaving is feasible: its speedup where its objective is below the
    original's, else 1.0 (the plan would run the original)."""
    from exitc import policy
    n = 1000
    scores = np.full((n, 1), 0.2, np.float32)
    scores[:600] = 0.99
    agree = np.ones((n, 1), bool)
    agree[600:] = False
    profile = _profile(k=1)
    cm = policy.CostModel(profile)
    expected = profile.user_original.at(32) / cm.expected([0], np.array([[1.0, 0.4]]), 32)[0]
    assert policy.fit_speedup([0], scores, agree, profile, req=0.99, never_slower=False) == pytest.approx(expected)
    assert policy.fit_speedup([0], scores, agree, profile, req=0.9995, never_slower=False) == pytest.approx(expected)
    nobody = np.array([[1.0, 1.0]])
    kept = policy.objective(cm, [0], nobody, 0.25, False)[0] < 1.0
    expected = profile.user_original.at(32) / cm.expected([0], nobody, 32)[0] if kept else 1.0
    assert policy.fit_speedup([0], scores, agree, profile, req=0.9996, never_slower=False) == pytest.approx(expected)
    assert policy.fit_speedup([], scores, agree, profile, req=0.99) == 1.0


def test_outlook_where_certification_keeps_no_exit(monkeypatch):
    """Exits chosen on the fit split that certification keeps none of: the plan runs the original,
    and the outlook prices those exits at the bars of larger sets. At target 1.0, which no number
    of rows certifies: no outlook."""
    from exitc import policy
    heads, cert_feats, cert_pred = _heads(1500, 1500)
    monkeypatch.setattr(policy, "certify_plan", lambda exits, *a, **k: Plan.without_exits(
        0.99, 0.95, "no configuration with exits could be certified at the requested target and confidence"))
    plan = policy_stage(heads, cert_feats, cert_pred, _profile(), CompileOptions(target_acc=0.99))
    assert not plan.exits and len(plan.outlook) == 3 and plan.outlook[0]["fit_speedup_batch"] > 1.0
    plan = policy_stage(heads, cert_feats, cert_pred, _profile(), CompileOptions(target_acc=1.0))
    assert not plan.exits and plan.outlook == []


def test_outlook_picks_exits_again_where_none_paid_at_todays_bar(monkeypatch):
    """No exit pays at today's bar (here: select_exits finds none above 99.4%): the outlook asks the
    fit split again at each larger set's bar, and says what it would pick; larger sets never
    estimate slower than smaller ones."""
    from exitc import policy
    from exitc.report import outlook_line
    real = policy.select_exits
    monkeypatch.setattr(policy, "select_exits", lambda s, a, p, req, *args, **kw: [] if req > 0.994 else real(s, a, p, req, *args, **kw))
    heads, cert_feats, cert_pred = _heads(1500, 1500)
    plan = policy_stage(heads, cert_feats, cert_pred, _profile(), CompileOptions(target_acc=0.99))
    assert not plan.exits and plan.outlook
    now, *larger = plan.outlook
    assert now["exits"] == [] and now["fit_speedup_batch"] == 1.0 and now["required_agreement"] > 0.994
    assert all(o["exits"] and o["fit_speedup_batch"] > 1.0 for o in larger)
    speedups = [o["fit_speedup_batch"] for o in plan.outlook]
    assert speedups == sorted(speedups)
    assert "1.00x now" in outlook_line(plan)


def _signal_and_noise_exits(seed, n=1500, k=6):
    """Gate scores of k candidates: exit 0's confident rows agree with the original (99.95%), the
    other exits agree 93% of the time whatever their score (any high-precision share is luck)."""
    rng = np.random.default_rng(seed)
    scores = rng.random((n, k))
    agree = rng.random((n, k)) < 0.93
    agree[:, 0] = rng.random(n) < np.where(scores[:, 0] > 0.5, 0.9995, 0.7)
    slices = [Cost(1e-4, 1e-3)] * (k + 1)
    # the original costs what its slices add up to: a plan whose exits take no row costs more
    profile = Profile(32, Cost(1e-4 * (k + 1), 1e-3 * (k + 1)), slices, [Cost(1e-5, 1e-5)] * k, 5e-5)
    return scores, agree, profile


def test_exit_count_supported_by_held_out_halves_keeps_out_lucky_exits():
    """On 1500 fit rows the beam search adds exits whose high-precision share is luck; sizing the
    set by 2-fold cross-validation inside the fit split (exits_supported) keeps most of them out
    and never drops the real one."""
    from exitc import policy

    req = required_rate(1500, 0.99, 0.95)
    lucky_free = lucky_sized = 0
    for seed in range(6):
        scores, agree, profile = _signal_and_noise_exits(seed)
        free = policy._best(policy._beam_costs(scores, agree, profile, req, 4, 0.25, True), 4)
        sized = policy.select_exits(scores, agree, profile, req, seed=seed)
        assert 0 in free and 0 in sized
        assert len(sized) <= policy.exits_supported(scores, agree, profile, req, 4, seed=seed)
        lucky_free += len(free) - 1
        lucky_sized += len(sized) - 1
    assert lucky_sized < lucky_free, (lucky_sized, lucky_free)


def test_exit_count_undecided_where_no_exit_pays_on_halves():
    from exitc import policy

    rng = np.random.default_rng(0)
    scores, agree = rng.random((400, 5)), np.zeros((400, 5), bool)  # every exit always wrong
    _, _, profile = _signal_and_noise_exits(0, n=400, k=5)
    assert policy.exits_supported(scores, agree, profile, required_rate(1500, 0.99, 0.95), 4) == 4
    assert policy.select_exits(scores, agree, profile, required_rate(1500, 0.99, 0.95)) == []
