"""Device facts read at run time: the NPU generation from XRT's device name, a per-process share of
hardware contexts, every pyxrt exception type as a DeviceError."""

from __future__ import annotations

import pytest

from xdna_ep.ep import simulated_pyxrt as xrt
from xdna_ep.ep.device import NPU1, NPU2, hw_context_share, profile_for_device_name
from xdna_ep.ep.xrt_backend import PYXRT_ERRORS, XrtDevice, detect_profile
from xdna_ep.errors import DeviceError


@pytest.mark.parametrize(
    ("device_name", "profile"),
    [
        ("RyzenAI-npu1", "npu1"),  # Phoenix / Hawk Point, as xrt-smi lists it
        ("|[0000:c6:00.1]  |RyzenAI-npu5  |", "npu2"),  # Strix Halo, an xrt-smi line
        ("RyzenAI-npu4", "npu2"),
        ("NPU Strix Halo", "npu2"),
        ("NPU Phoenix", "npu1"),
    ],
)
def test_device_names_map_to_their_generation(device_name, profile):
    assert profile_for_device_name(device_name) == profile


def test_an_unknown_device_name_is_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown NPU 'Versal VCK190': xdna-ep has profiles for .*RyzenAI-npu1"):
        profile_for_device_name("Versal VCK190")


def test_the_simulated_device_reports_its_generation_and_detection_reads_it():
    with xrt.separate_machine(NPU2):
        assert xrt.device(0).get_info(xrt.xrt_info_device.name) == "RyzenAI-npu4"
        assert detect_profile("sim") == "npu2"


def test_a_profile_that_does_not_match_the_device_is_refused(monkeypatch):
    with xrt.separate_machine(NPU1):
        monkeypatch.setattr(xrt.device, "get_info", lambda self, key: "RyzenAI-npu4")
        with pytest.raises(DeviceError, match=r"profile npu1 does not match the device: XRT names it 'RyzenAI-npu4', an npu2"):
            XrtDevice("sim", "npu1")


def test_the_process_takes_a_configurable_share_of_hardware_contexts(monkeypatch):
    monkeypatch.delenv("XDNA_EP_HW_CONTEXTS", raising=False)
    assert hw_context_share(NPU1) == 3 and hw_context_share(NPU2) == 8  # half of 6 and 16 by default
    monkeypatch.setenv("XDNA_EP_HW_CONTEXTS", "2")
    assert hw_context_share(NPU1) == 2
    with xrt.separate_machine(NPU1):
        assert XrtDevice("sim", "npu1").context_budget == 2
    for bad in ("7", "0", "two", "1.5"):
        monkeypatch.setenv("XDNA_EP_HW_CONTEXTS", bad)
        with pytest.raises(ValueError, match=r"XDNA_EP_HW_CONTEXTS=.*must be an integer from 1 to 6"):
            hw_context_share(NPU1)


@pytest.mark.parametrize("error_type", PYXRT_ERRORS)
def test_every_pyxrt_exception_type_becomes_a_device_error(error_type):
    with xrt.separate_machine(NPU1):
        device = XrtDevice("sim", "npu1")

    def failing():
        raise error_type("bad thing")

    with pytest.raises(DeviceError, match=rf"sim bo.sync: {error_type.__name__}: .*bad thing"):
        device.call("bo.sync", failing)


def test_split_attention_launches_go_as_one_runlist_at_the_runlist_cost():
    import dataclasses

    import numpy as np

    from xdna_ep.ep import cost_model
    from xdna_ep.ep.npu_executor import NpuExecutor
    from xdna_ep.kernels.attention.reference import attention_reference

    # a driver timeout short enough that the 6 heads need 3 launches of 2
    impatient = dataclasses.replace(NPU1, driver_timeout_s=2 * cost_model.attention_compute_s(NPU1, 1, 512, 64, 64, 1))
    with xrt.separate_machine(impatient) as machine:
        executor = NpuExecutor(device="sim", profile="npu1", precision="bf16")
        executor.device = XrtDevice("sim", impatient)
        executor.profile = impatient
        executor.device.self_checks["xdna_attention_d64_bf16_npu1"] = ""  # checked already: only the batch launches
        rng = np.random.default_rng(4)
        q, k, v = (rng.standard_normal((1, 6, 40, 64)).astype(np.float32) for _ in range(3))
        out = executor.attention("attn", q, k, v, 0.125, False)
        records = [record for record in machine.ledger.records if record.kind == "attention"]
    # each head group computes on buffers of its own; the kernel's online softmax rounds exp(s - running
    # max) to bf16 per key tile where the reference rounds exp(s - final max): measured 1.4e-3 at 40 keys
    np.testing.assert_allclose(out, attention_reference(q, k, v, 0.125, False, "bf16"), rtol=0, atol=2e-3)
    assert [record.shape for record in records] == [(2, 512, 64, 64)] * 3
    compute = cost_model.attention_compute_s(impatient, 2, 512, 64, 64, 1)
    switch = impatient.design_switch_s
    modelled = sum(record.modelled_s for record in records)
    # each run at the runlist's 0.76 of a launch (whisper-xdna), one switch for the batch
    assert modelled == pytest.approx(switch + 3 * (impatient.launch_s * impatient.runlist_launch_factor + compute), rel=1e-9)
