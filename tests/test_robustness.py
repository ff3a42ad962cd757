"""Threat models, worst case and sanity checks of the robustness report."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdefense import robustness
from jaxdefense.attacks.presets import get_preset

W = jax.random.normal(jax.random.key(0), (16, 10))
W_SRC = jax.random.normal(jax.random.key(9), (16, 10))


def served(x):
    return x.reshape(x.shape[0], -1) @ W


def source(x):
    return x.reshape(x.shape[0], -1) @ W_SRC


def _data(n=48):
    x = jax.random.uniform(jax.random.key(1), (n, 4, 4, 1))
    return np.asarray(x), np.asarray(jnp.argmax(served(x), 1))


def test_report_threats_worst_case_and_checks():
    x, y = _data()
    models = robustness.Models(served=served, classifier=served, source=source)
    attacks = {"fgsm": dict(eps=0.1),
               "pgd": dict(eps=0.1, step_size=0.025, steps=10, random_start=False)}
    res = robustness.report(models, x, y, jax.random.key(0), attacks,
                            ("whitebox", "target-only", "transfer"), progress=False)
    assert res["clean"] == 1.0
    wb = res["whitebox"]
    assert wb["worst_case"] <= min(wb["fgsm"], wb["pgd"])
    assert res["target-only"]["pgd"] == pytest.approx(wb["pgd"])   # classifier == served
    assert wb["pgd"] <= res["transfer"]["pgd"]
    assert all(v <= 0.1 + 1e-6 for v in res["max_linf"].values())
    checks = robustness.sanity_checks(models, x, y, jax.random.key(0), res, 10, attacks=attacks)
    names = [c for c, _, _ in checks]
    assert "more steps never help the defense" in names
    assert all(ok for _, ok, _ in checks), checks
    assert "worst_case" in robustness.format_table(res)


def test_eps_sweep_draws_every_threat_model_and_the_source_alone(tmp_path):
    from jaxdefense import plots
    x, y = _data()
    models = robustness.Models(served=served, classifier=served, source=source)
    sweep = robustness.eps_sweep(models, x, y, jax.random.key(0), [0.0, 0.3], steps=5,
                                 threats=("whitebox", "transfer"))
    assert set(sweep) == {"eps"} | {f"{t}/{a}" for t in ("whitebox", "transfer", "source alone")
                                    for a in ("fgsm", "pgd")}
    assert sweep["whitebox/pgd"][0] == sweep["transfer/pgd"][0] == 1.0   # eps 0: clean
    src_clean = float(np.mean(np.argmax(source(x), 1) == y))            # source scored alone
    assert sweep["source alone/pgd"][0] == pytest.approx(src_clean)
    assert sweep["whitebox/pgd"][1] <= sweep["transfer/pgd"][1]         # the protocols' gap
    assert sweep["whitebox/pgd"][1] < 0.5
    path = plots.accuracy_vs_eps(str(tmp_path / "eps.png"), sweep, "t")
    assert (tmp_path / "eps.png").stat().st_size > 1000 and path.endswith("eps.png")


def test_a_stopped_report_resumes_from_its_finished_batches(tmp_path):
    x, y = _data(40)
    models = robustness.Models(served=served, classifier=served, source=source)
    attacks = {"pgd": dict(eps=0.1, step_size=0.025, steps=5)}
    cache = str(tmp_path / "cache")
    full = robustness.report(models, x, y, jax.random.key(0), attacks, ("whitebox", "transfer"),
                             batch_size=16, progress=False, cache=cache)
    assert sorted(p.name for p in (tmp_path / "cache" / "whitebox-pgd").iterdir()) == \
        ["0.json", "1.json", "2.json"]
    (tmp_path / "cache" / "transfer-pgd" / "2.json").unlink()        # stopped in its last batch
    calls = []

    def counting_source(xb):
        calls.append(1)
        return source(xb)
    again = robustness.report(dataclasses.replace(models, source=counting_source), x, y,
                              jax.random.key(0), attacks, ("whitebox", "transfer"),
                              batch_size=16, progress=False, cache=cache)
    assert again == full
    assert calls                        # the missing batch was attacked again
    assert (tmp_path / "cache" / "transfer-pgd" / "2.json").is_file()


def test_crafted_batches_are_kept_and_reused_by_another_served_model(tmp_path):
    """Examples crafted on one model are kept (`crafts`) and scored again in front of a
    different served model without attacking, as purifiers in front of one target share
    them; the scores are the new model's."""
    x, y = _data(40)
    craft = robustness.craft_fn("pgd", dict(eps=0.1, step_size=0.025, steps=5), False)
    calls = []

    def counting(f, xb, yb, k):
        calls.append(len(xb))
        return craft(f, xb, yb, k)
    crafts = str(tmp_path / "crafts")
    first, _ = robustness.correct_under(served, False, served, counting, x, y,
                                        jax.random.key(0), 16, crafts=crafts)
    assert len(calls) == 3 and sorted(p.name for p in (tmp_path / "crafts").iterdir()) == \
        ["0.npz", "1.npz", "2.npz"]
    other = lambda xb: served(jnp.clip(xb + 0.05, 0, 1))        # noqa: E731
    again, _ = robustness.correct_under(other, False, served, counting, x, y,
                                        jax.random.key(0), 16, crafts=crafts)
    assert len(calls) == 3                                       # nothing crafted again
    fresh, _ = robustness.correct_under(other, False, served, craft, x, y, jax.random.key(0), 16)
    np.testing.assert_array_equal(again, fresh)
    assert not np.array_equal(first, again)


def test_an_attack_keys_on_its_settings_not_its_name_or_place(monkeypatch):
    """`report` gives an attack the key of its settings: the same entry under another name,
    at another place or under another threat model gets the same key (so crafted examples
    can be shared), a changed setting another."""
    seen = []

    def fake(f, x, y, k, **kw):
        seen.append((kw["eps"], tuple(np.asarray(jax.random.key_data(k)).ravel().tolist())))
        return x
    monkeypatch.setitem(robustness.attack_lib.ATTACKS, "pgd", fake)
    x, y = _data(16)
    models = robustness.Models(served=served, source=source)
    a, b = dict(attack="pgd", eps=0.1), dict(attack="pgd", eps=0.2)
    robustness.report(models, x, y, jax.random.key(0), {"p": a, "q": b}, ("whitebox",),
                      progress=False)
    robustness.report(models, x, y, jax.random.key(0), {"q2": b, "p2": a}, ("transfer",),
                      progress=False)
    keys = dict(seen[:2])
    assert [keys[e] for e, _ in seen[2:]] == [k for _, k in seen[2:]]
    assert keys[0.1] != keys[0.2]


def test_sanity_checks_flag_a_masked_model():
    x, y = _data()
    masked = lambda xa: served(jnp.round(xa * 2) / 2)
    y = np.asarray(jnp.argmax(masked(jnp.asarray(x)), 1))
    models = robustness.Models(served=masked)
    res = robustness.report(models, x, y, jax.random.key(0), {"pgd": dict(eps=0.1, steps=5)},
                            progress=False)
    checks = dict((c, ok) for c, ok, _ in
                  robustness.sanity_checks(models, x, y, jax.random.key(0), res, 10))
    assert checks["gradients are non-zero"] is False


def gradient_noise(x, key):
    """served(x) forward; its input gradient plus a zero-mean random term three times its
    size, so only an attack that averages draws (EOT) follows the true gradient."""
    g = 3.0 * x.reshape(x.shape[0], -1) @ jax.random.normal(key, W.shape)
    return served(x) + g - jax.lax.stop_gradient(g)


def test_randomized_model_gets_eot():
    x = np.asarray(jax.random.uniform(jax.random.key(1), (64, 4, 4, 1)))
    y = np.asarray(jnp.argmax(served(x), 1))
    models = robustness.Models(served=gradient_noise, stochastic=True)
    attacks = {"pgd": dict(eps=0.1, step_size=0.025, steps=10), "fgsm": dict(eps=0.1),
               "eotpgd": dict(eps=0.1, step_size=0.025, steps=10)}
    res = robustness.report(models, x, y, jax.random.key(0), attacks, progress=False)
    one = robustness.report(models, x, y, jax.random.key(0),
                            {k: dict(v, eot_samples=1) for k, v in attacks.items()},
                            progress=False)
    for name in attacks:      # EOT by default (20 draws) on every gradient attack
        assert res["whitebox"][name] <= one["whitebox"][name] - 0.15, (name, res, one)


def test_scoring_draws_never_repeat_an_attack_draw():
    key = jax.random.key(3)
    data = lambda k: tuple(np.asarray(jax.random.key_data(k)).ravel().tolist())
    for batch in range(3):
        attack_key = jax.random.fold_in(key, batch)        # what the attack on the batch gets
        reach, frontier = {data(attack_key)}, [attack_key]
        for _ in range(3):                                 # every key 3 derivations down
            frontier = [d for k in frontier for d in
                        [jax.random.fold_in(k, j) for j in range(4)] +
                        list(jax.random.split(k, 4)) + list(jax.random.split(k, 2))]
            reach |= {data(k) for k in frontier}
        draws = jax.random.split(robustness.score_key(key, batch), 8)
        assert not {data(k) for k in draws} & reach


def test_presets_and_errors():
    p = get_preset("grfd-mnist", max_steps=10, only=("pgd", "autoattack"))
    assert p["pgd"] == dict(eps=18 / 255, step_size=8 / 255, steps=10)
    assert p["autoattack"]["steps"] == 10 and p["autoattack"]["square_queries"] == 100
    assert get_preset("grfd-cifar")["pgd"]["steps"] == 200
    with pytest.raises(ValueError, match="has no"):
        get_preset("robustbench", only=("fgsm",))
    x, y = _data(8)
    with pytest.raises(ValueError, match="needs a source model"):
        robustness.report(robustness.Models(served=served), x, y, jax.random.key(0),
                          {"fgsm": dict(eps=0.1)}, ("transfer",), progress=False)
