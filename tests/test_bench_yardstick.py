"""``bench.yardstick.ratios``: the headline figures divided by the machine's
yardstick, as ``bench.json`` reports them (``per_yardstick``)."""

from __future__ import annotations

from bench.yardstick import ratios


def test_yardstick_ratios_keep_three_significant_digits() -> None:
    """A small ratio (a quick run's M4 beside the machine's loopback sends/s) is not
    rounded to 0.0; a missing figure or yardstick gives None."""
    stick = {"loopback_sends_per_s": 400_000, "connects_per_s": 50_000, "echo_rtt_us": 100}
    got = ratios({"M3": 12_345, "M4": 190, "M6": 0.25, "M7": None}, stick)
    assert got == {"M3": 0.247, "M4": 0.000475, "M6": 2.5, "M7": None}
