"""The mass-balanced host sample (features/balance.py): which hosts it keeps, and the selection function it reports."""

from __future__ import annotations

import numpy as np
import pytest

import features.balance as balance
from features.balance import BalanceSpec, balanced_hosts
from features.config import ObserveSection
from features.cylinder import CylinderSpec, ObservationSpec
from features.observe import make_observations, observed_hosts, select_hosts
from inference.population import step_selection
from ingest.catalog import read_galaxies, read_halos
from pipeline.errors import ConfigError


def _sample(counts: dict[float, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Masses uniform inside each 0.1-dex bin [lo, lo + 0.1) with the given counts, and distinct ids."""
    rng = np.random.default_rng(seed)
    m = np.concatenate([lo + 0.1 * rng.uniform(0.001, 0.999, n) for lo, n in counts.items()])
    return m, rng.permutation(len(m)).astype(np.int64) * 7 + 11


def test_every_bin_below_keeps_at_most_the_reference_bins_count():
    counts = {13.0: 900, 13.1: 600, 13.2: 250, 13.3: 150, 13.4: 300, 13.5: 40}
    m, ids = _sample(counts)
    keep, sel = balanced_hosts(m, ids, BalanceSpec(below=13.4), log10_m_min=13.0)
    kept = {lo: int(np.sum(keep & (m >= lo) & (m < lo + 0.1))) for lo in counts}
    assert kept == {13.0: 300, 13.1: 300, 13.2: 250, 13.3: 150, 13.4: 300, 13.5: 40}
    assert sel["edges"] == pytest.approx([13.0, 13.1, 13.2, 13.3, 13.4])
    assert sel["fraction"] == pytest.approx([300 / 900, 300 / 600, 1.0, 1.0])
    # the selection function at the hosts' masses (the table a catalog records, read as the population analysis
    # reads it) is the fraction of each bin kept
    s = step_selection(sel["edges"], sel["fraction"])(m)
    for lo in counts:
        in_bin = (m >= lo) & (m < lo + 0.1)
        assert np.allclose(s[in_bin], kept[lo] / counts[lo])
    assert step_selection(sel["edges"], sel["fraction"])(np.array([12.9]))[0] == 0.0


def test_a_partial_lowest_bin_keeps_its_share_and_a_small_reference_bin_is_floored():
    counts = {13.0: 500, 13.1: 400, 13.2: 10}
    m, ids = _sample(counts)
    m, ids = m[m >= 13.05], ids[m >= 13.05]
    keep, sel = balanced_hosts(m, ids, BalanceSpec(below=13.2), log10_m_min=13.05)
    cap = balance.MIN_CAP  # the reference bin holds 10 < MIN_CAP
    assert np.sum(keep & (m < 13.1)) == min(np.sum(m < 13.1), cap // 2)
    assert np.sum(keep & (m >= 13.1) & (m < 13.2)) == cap
    assert sel["edges"][0] == pytest.approx(13.05)


def test_the_kept_hosts_depend_on_the_ids_and_seed_only():
    m, ids = _sample({13.0: 800, 13.1: 200})
    keep, _ = balanced_hosts(m, ids, BalanceSpec(below=13.1), log10_m_min=13.0)
    order = np.random.default_rng(1).permutation(len(m))
    again, _ = balanced_hosts(m[order], ids[order], BalanceSpec(below=13.1), log10_m_min=13.0)
    assert set(ids[keep]) == set(ids[order][again])
    other, _ = balanced_hosts(m, ids, BalanceSpec(below=13.1, seed=5), log10_m_min=13.0)
    assert set(ids[keep]) != set(ids[other]) and other.sum() == keep.sum()


def test_disabled_or_below_the_cut_keeps_every_host():
    m, ids = _sample({13.0: 800, 13.1: 200})
    for spec, cut in ((BalanceSpec(below=None), 13.0), (BalanceSpec(below=13.0), 13.0), (BalanceSpec(12.0), 13.0)):
        keep, sel = balanced_hosts(m, ids, spec, log10_m_min=cut)
        assert keep.all() and sel == {"edges": [], "fraction": []}


@pytest.mark.parametrize("bad", [{"below": float("nan")}, {"bin_width": 0.0}, {"bin_width": 2.0}, {"seed": -1}])
def test_bad_specs_are_refused(bad):
    with pytest.raises(ConfigError):
        BalanceSpec(**bad)


def test_the_observe_section_builds_and_checks_the_balance():
    spec = ObserveSection().observation_spec()
    assert spec.balance.below == 14.0 and spec.cylinder.host_log10_m200c_min == 13.0
    assert ObserveSection(balance_below=13.7, balance_seed=4).observation_spec().balance == BalanceSpec(13.7, seed=4)
    with pytest.raises(ConfigError, match="balance_below"):
        ObserveSection(balance_below=17.0)
    assert ObservationSpec.from_dict({**spec.to_dict(), "balance": None}).balance.below is None


def test_observations_cover_the_balanced_hosts_and_record_the_selection(tiny_box, monkeypatch):
    halos, galaxies = read_halos(tiny_box / "halos.h5"), read_galaxies(tiny_box / "galaxies.h5")
    monkeypatch.setattr(balance, "MIN_CAP", 1)  # the tiny box's bins are far below the floor
    cylinder = CylinderSpec(host_log10_m200c_min=13.0)
    config = ObservationSpec(cylinder=cylinder, balance=BalanceSpec(below=13.6))
    everyone = select_hosts(halos, 13.0)
    hosts, selection = observed_hosts(halos, config)
    assert 0 < len(hosts) < len(everyone) and selection["fraction"] and min(selection["fraction"]) < 1
    obs = make_observations(halos, galaxies, config)
    assert set(obs.table.cluster_id) <= set(hosts.halo_id) and obs.n_hosts == len(hosts)
    assert obs.selection == selection
