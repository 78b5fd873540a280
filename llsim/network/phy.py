"""802.11 OFDM PHY: MCS tables, receiver sensitivity and data rates (a/n/ac/ax).

Every number here comes from IEEE Std 802.11-2020 (and 802.11ax-2021 for HE):

* Modulation and coding rate per MCS: BPSK 1/2, QPSK 1/2, QPSK 3/4, 16-QAM 1/2, 16-QAM 3/4,
  64-QAM 2/3, 64-QAM 3/4, 64-QAM 5/6, 256-QAM 3/4, 256-QAM 5/6 (VHT MCS0-9, Table 21-29 ff.),
  1024-QAM 3/4 and 5/6 (HE MCS10/11, 802.11ax Table 27-55 ff.). HT uses MCS0-7 per stream.
* Data subcarriers N_SD: HT/VHT 52/108/234/468 at 20/40/80/160 MHz; HE 234/468/980/1960
  (HE uses 4x longer symbols with 4x denser subcarriers). 802.11a: 48 at 20 MHz.
* Symbol time: HT/VHT 3.2 us + guard interval 0.8 us (long) or 0.4 us (short); HE 12.8 us + GI
  0.8 us ("short", the value used for the published HE peak rates) or 3.2 us ("long");
  802.11a 4 us.
* Rate = N_SD x bits/subcarrier x coding rate x N_SS / T_symbol. Spot checks (tested):
  VHT 80 MHz MCS9 short GI = 433.3 Mb/s per stream (866.7 for 2), HE 80 MHz MCS11 2 streams
  GI 0.8 us = 1201 Mb/s, 802.11a "MCS7" = 54 Mb/s.
* Minimum receiver sensitivity at 20 MHz, MCS0..9: -82, -79, -77, -74, -70, -66, -65, -64, -59,
  -57 dBm; HE MCS10/11: -54/-52 dBm; +3 dB per doubling of channel width (IEEE 802.11-2020
  Table 21-25; summarised in ``/work/shared/reference/wifi-and-phones.md``).
* Preamble durations (PHY header before the data symbols), per spatial stream count N_SS with
  N_LTF = 1, 2, 4, 4 training fields for 1-4 streams: 802.11a 20 us; HT-mixed 32 + 4 N_LTF us;
  VHT 36 + 4 N_LTF us (L-STF 8, L-LTF 8, L-SIG 4, VHT-SIG-A 8, VHT-STF 4, VHT-LTFs, VHT-SIG-B 4);
  HE SU 36 + 8 N_LTF us (2x HE-LTF 6.4 us + 1.6 us GI). HE 1 stream = 44 us, the value the ns-3
  Bianchi reference script (``src/wifi/examples/reference/bianchi11ax.py``) uses.

MCS combinations the standard forbids (VHT MCS9 at 20 MHz for 1, 2 and 4 streams, VHT 80 MHz MCS6
with 3 streams, VHT 160 MHz MCS9 with 3 streams) are skipped by :func:`select_mcs`.
"""
from __future__ import annotations

from functools import lru_cache

from llsim.errors import LLSimError

#: Standards understood by the PHY tables. ``a`` exists for validating the MAC model against the
#: published 802.11a Bianchi numbers; scenarios choose among ``n``, ``ac`` and ``ax``.
STANDARDS = ("a", "n", "ac", "ax")

#: (bits per subcarrier, coding rate numerator, denominator) per MCS index 0..11.
MCS_MODULATION: tuple[tuple[int, int, int], ...] = (
    (1, 1, 2),  # MCS0 BPSK 1/2
    (2, 1, 2),  # MCS1 QPSK 1/2
    (2, 3, 4),  # MCS2 QPSK 3/4
    (4, 1, 2),  # MCS3 16-QAM 1/2
    (4, 3, 4),  # MCS4 16-QAM 3/4
    (6, 2, 3),  # MCS5 64-QAM 2/3
    (6, 3, 4),  # MCS6 64-QAM 3/4
    (6, 5, 6),  # MCS7 64-QAM 5/6
    (8, 3, 4),  # MCS8 256-QAM 3/4
    (8, 5, 6),  # MCS9 256-QAM 5/6
    (10, 3, 4),  # MCS10 1024-QAM 3/4 (HE only)
    (10, 5, 6),  # MCS11 1024-QAM 5/6 (HE only)
)

#: 802.11a rates 6, 9, 12, 18, 24, 36, 48, 54 Mb/s as "MCS" 0..7: (bits, rate num, den).
LEGACY_MODULATION: tuple[tuple[int, int, int], ...] = (
    (1, 1, 2), (1, 3, 4), (2, 1, 2), (2, 3, 4), (4, 1, 2), (4, 3, 4), (6, 2, 3), (6, 3, 4),
)

#: Minimum sensitivity (dBm) per MCS at 20 MHz (IEEE 802.11-2020 Table 21-25; HE MCS10/11 from
#: 802.11ax). Wider channels need +3 dB per doubling.
SENSITIVITY_20MHZ_DBM: tuple[float, ...] = (-82, -79, -77, -74, -70, -66, -65, -64, -59, -57, -54, -52)

#: 802.11a minimum sensitivity for 6..54 Mb/s (IEEE 802.11-2020 Table 17-18).
LEGACY_SENSITIVITY_DBM: tuple[float, ...] = (-82, -81, -79, -77, -74, -70, -66, -65)

#: Highest MCS index per standard.
MAX_MCS = {"a": 7, "n": 7, "ac": 9, "ax": 11}
#: Channel widths per standard (MHz).
WIDTHS = {"a": (20,), "n": (20, 40), "ac": (20, 40, 80, 160), "ax": (20, 40, 80, 160)}
#: Spatial streams this model supports (phones have 1-2, APs up to 4; 11ac/ax allow 8).
MAX_STREAMS = 4

_N_SD_HT_VHT = {20: 52, 40: 108, 80: 234, 160: 468}
_N_SD_HE = {20: 234, 40: 468, 80: 980, 160: 1960}
_N_LTF = {1: 1, 2: 2, 3: 4, 4: 4}

#: (width, streams, mcs) forbidden for VHT (802.11-2020 Tables 21-30..21-61).
_VHT_INVALID = {(20, 1, 9), (20, 2, 9), (20, 4, 9), (80, 3, 6), (160, 3, 9)}

#: Non-HT reference rate (Mb/s) of each MCS's modulation and coding (802.11-2020 10.6.6.5.2);
#: control responses (ACK, BlockAck, CTS) go at the highest mandatory rate (6, 12, 24) not above it.
_NON_HT_REFERENCE_MBPS = (6, 12, 18, 24, 36, 48, 54, 54, 54, 54, 54, 54)
_LEGACY_RATES_MBPS = (6, 9, 12, 18, 24, 36, 48, 54)
_MANDATORY_RATES_MBPS = (6, 12, 24)


def check_phy(standard: str, width_mhz: int, streams: int) -> None:
    """Raise :class:`LLSimError` if the (standard, width, streams) combination is not supported."""
    if standard not in STANDARDS:
        raise LLSimError(f"unknown Wi-Fi standard {standard!r}: use one of n, ac, ax")
    if width_mhz not in WIDTHS[standard]:
        raise LLSimError(
            f"802.11{standard} does not support a {width_mhz} MHz channel: use one of "
            + ", ".join(str(w) for w in WIDTHS[standard])
        )
    max_ss = 1 if standard == "a" else MAX_STREAMS
    if not 1 <= int(streams) <= max_ss:
        raise LLSimError(f"802.11{standard}: {streams} spatial streams is out of range 1..{max_ss}")


def symbol_us(standard: str, gi: str = "short") -> float:
    """OFDM symbol duration including the guard interval, in microseconds."""
    if gi not in ("short", "long"):
        raise LLSimError(f"guard interval must be 'short' or 'long', not {gi!r}")
    if standard == "a":
        return 4.0
    if standard == "ax":
        return 12.8 + (0.8 if gi == "short" else 3.2)
    return 3.2 + (0.4 if gi == "short" else 0.8)


def preamble_us(standard: str, streams: int = 1) -> float:
    """PHY preamble + header duration before the first data symbol, in microseconds."""
    n_ltf = _N_LTF[int(streams)]
    if standard == "a":
        return 20.0
    if standard == "n":
        return 32.0 + 4.0 * n_ltf
    if standard == "ac":
        return 36.0 + 4.0 * n_ltf
    if standard == "ax":
        return 36.0 + 8.0 * n_ltf
    raise LLSimError(f"unknown Wi-Fi standard {standard!r}")


def mcs_valid(standard: str, mcs: int, width_mhz: int, streams: int) -> bool:
    """Whether the standard defines this MCS at this width and stream count."""
    if not 0 <= mcs <= MAX_MCS[standard]:
        return False
    if standard == "ac" and (width_mhz, streams, mcs) in _VHT_INVALID:
        return False
    return True


def data_bits_per_symbol(standard: str, mcs: int, width_mhz: int = 20, streams: int = 1) -> float:
    """N_DBPS: data bits carried by one OFDM symbol (all streams)."""
    check_phy(standard, width_mhz, streams)
    if not 0 <= mcs <= MAX_MCS[standard]:
        raise LLSimError(f"802.11{standard} has no MCS{mcs} (0..{MAX_MCS[standard]})")
    if standard == "a":
        bits, num, den = LEGACY_MODULATION[mcs]
        return 48 * bits * num / den
    bits, num, den = MCS_MODULATION[mcs]
    n_sd = (_N_SD_HE if standard == "ax" else _N_SD_HT_VHT)[width_mhz]
    return n_sd * bits * num / den * streams


@lru_cache(maxsize=None)
def mcs_rate_mbps(standard: str, mcs: int, width_mhz: int = 20, streams: int = 1, gi: str = "short") -> float:
    """PHY data rate (Mb/s) of one MCS: N_DBPS / T_symbol."""
    return data_bits_per_symbol(standard, mcs, width_mhz, streams) / symbol_us(standard, gi)


def sensitivity_dbm(standard: str, mcs: int, width_mhz: int = 20) -> float:
    """Minimum receiver sensitivity of ``mcs`` at ``width_mhz`` (+3 dB per width doubling)."""
    table = LEGACY_SENSITIVITY_DBM if standard == "a" else SENSITIVITY_20MHZ_DBM
    doublings = {20: 0, 40: 1, 80: 2, 160: 3}[width_mhz]
    return table[mcs] + 3.0 * doublings


def control_rate_mbps(standard: str, mcs: int) -> float:
    """Rate of the ACK/BlockAck/CTS answering a frame sent at ``mcs`` (legacy OFDM PPDU).

    The highest mandatory rate (6, 12, 24 Mb/s) not above the frame's non-HT reference rate; this
    reproduces the ACK rates of ns-3's Bianchi reference scripts (e.g. 24 Mb/s for 54 Mb/s and
    for HE MCS11, 12 Mb/s for HE MCS2).
    """
    ref = _LEGACY_RATES_MBPS[mcs] if standard == "a" else _NON_HT_REFERENCE_MBPS[mcs]
    return float(max(r for r in _MANDATORY_RATES_MBPS if r <= ref))


def select_mcs(rssi_dbm: float, standard: str, width_mhz: int, streams: int) -> int:
    """Highest valid MCS whose width-adjusted sensitivity is <= ``rssi_dbm``.

    Raises :class:`LLSimError` when the signal is below MCS0's sensitivity: the link is unusable.
    """
    check_phy(standard, width_mhz, streams)
    floor = sensitivity_dbm(standard, 0, width_mhz)
    if rssi_dbm < floor:
        raise LLSimError(
            f"RSSI {rssi_dbm:g} dBm is below the 802.11{standard} MCS0 sensitivity at {width_mhz} MHz "
            f"({floor:g} dBm): the link is unusable; raise the RSSI or use a narrower channel"
        )
    for mcs in range(MAX_MCS[standard], -1, -1):
        if mcs_valid(standard, mcs, width_mhz, streams) and sensitivity_dbm(standard, mcs, width_mhz) <= rssi_dbm:
            return mcs
    return 0  # unreachable: MCS0 is always valid and passed the check above


def phy_rate_mbps(rssi_dbm: float, standard: str = "ac", width_mhz: int = 80, streams: int = 1, gi: str = "short") -> float:
    """PHY data rate (Mb/s) a receiver at ``rssi_dbm`` supports (best MCS whose sensitivity it meets)."""
    return mcs_rate_mbps(standard, select_mcs(rssi_dbm, standard, width_mhz, streams), width_mhz, streams, gi)
