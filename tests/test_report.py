"""The compile summary's warnings (exitc.report)."""

from exitc.policy import Plan
from exitc.report import median_cliff_note, outlook_line


def _plan(fractions):
    exits = list(range(len(fractions) - 1))
    return Plan(exits, [0.9] * len(exits), 0.1, 0.99, 0.95, 1500, 1500, 0.995, 0.995, 0.9904, list(fractions),
                1.0, 1.0, 2.0, 2.0)


def test_median_cliff_note_where_about_half_the_rows_leave():
    note = median_cliff_note(_plan([0.508, 0.492]), "segmented")
    assert note and "50.8%" in note and "exit 0" in note and "an early one" in note
    # none of the exits gets half the rows out: the median request runs to the end
    note = median_cliff_note(_plan([0.47, 0.02, 0.51]), "segmented")
    assert note and "49.0%" in note and "exit 1" in note and "runs to the end" in note
    # the first-exit form: exit 0 alone decides
    assert "exit 0" in median_cliff_note(_plan([0.53, 0.10, 0.37]), "first_exit")


def test_no_median_cliff_note_far_from_half_or_without_exits():
    assert median_cliff_note(_plan([0.30, 0.40, 0.30]), "segmented") is None   # 70% out by exit 1
    assert median_cliff_note(_plan([0.60, 0.10, 0.30]), "first_exit") is None
    assert median_cliff_note(_plan([0.508, 0.492]), "original") is None
    assert median_cliff_note(Plan.without_exits(0.99, 0.95, "none"), "segmented") is None


def test_outlook_line_states_the_bar_and_relative_gains():
    plan = _plan([0.5, 0.5])
    assert outlook_line(plan) is None                       # no outlook (e.g. no exits)
    plan.outlook = [{"calibration_rows": 3000, "certification_rows": 1500, "required_agreement": 0.99467,
                     "fit_speedup_batch": 2.0},
                    {"calibration_rows": 6000, "certification_rows": 3000, "required_agreement": 0.99333,
                     "fit_speedup_batch": 2.1}]
    line = outlook_line(plan)
    assert "3000 rows certify at >= 99.47% agreement on 1500" in line
    assert "6000 rows (3000 certify at >= 99.33%) +5.0%" in line


def test_outlook_line_without_exits_gives_the_estimates_themselves():
    plan = Plan.without_exits(0.99, 0.95, "no configuration with exits could be certified")
    plan.outlook = [{"calibration_rows": 600, "certification_rows": 300, "required_agreement": 1.0,
                     "fit_speedup_batch": 1.4},
                    {"calibration_rows": 1200, "certification_rows": 600, "required_agreement": 0.995,
                     "fit_speedup_batch": 1.9}]
    line = outlook_line(plan)
    assert "1.40x now" in line and "1200 rows (600 certify at >= 99.50%) 1.90x" in line
    plan.outlook[1]["fit_speedup_batch"] = 1.4      # more rows change no estimate: nothing to say
    assert outlook_line(plan) is None
