"""Line-drop compensation of the simulated regulators' own controllers (a pure function)."""

from __future__ import annotations

import pytest

from protocols.simulator import compensated_voltage


def test_no_compensation_is_the_regulators_own_voltage() -> None:
    assert compensated_voltage(1.02, 3.0, 1.0, 0.0, 0.0, 12.66) == 1.02
    assert compensated_voltage(0.0, 3.0, 1.0, 1.0, 0.5, 12.66) == 0.0


def test_the_drop_to_the_load_centre_is_r_p_plus_x_q_over_v() -> None:
    """12.66 kV, 1.5 MW and 0.8 Mvar out over 1 + j0.5 ohm: dV = (1.5 + 0.4) / (1.02 x 12.66) kV."""
    v = compensated_voltage(1.02, 1.5, 0.8, 1.0, 0.5, 12.66)
    drop_kv = (1.0 * 1.5 + 0.5 * 0.8) / (1.02 * 12.66)
    assert v == pytest.approx(1.02 - drop_kv / 12.66, abs=1e-12)
    assert 1.02 - v == pytest.approx(0.0115, abs=2e-4)  # about a per cent: the regulator raises that much more


def test_reverse_power_raises_the_compensated_voltage() -> None:
    """PV pushing power back through the regulator: the load centre sits above the regulator."""
    assert compensated_voltage(1.03, -1.0, 0.0, 1.0, 0.5, 12.66) > 1.03
