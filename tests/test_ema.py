"""EMATeacher: one flat buffer per dtype, vs the per-parameter reference loop, aliasing after optimizer
steps, BN buffers copied or averaged, state_dict round trip."""
import copy
import functools

import pytest
import torch
from torch import nn

import fastssl.train.ema as ema_mod
from fastssl.kernels import ema_update_
from fastssl.train.ema import EMATeacher

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 3, bias=False),
                      nn.BatchNorm2d(5), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 7))
    return m.to(dtype=dtype, memory_format=torch.channels_last)


def _train_step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 9, 9, generator=g, dtype=next(model.parameters()).dtype)
    model.train()
    opt.zero_grad()
    model(x.contiguous(memory_format=torch.channels_last)).square().mean().backward()
    opt.step()


def _reference_update(ref_t, student, decay, buffers):
    for t, s in zip(ref_t.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach() * (1 - decay))
    for t, s in zip(ref_t.buffers(), student.buffers()):
        if buffers == "ema" and t.is_floating_point():
            t.mul_(decay).add_(s * (1 - decay))
        else:
            t.copy_(s)


def _assert_views(flat, params):
    """Every parameter is a view of `flat`: writing through the flat buffer changes all of them."""
    params = list(params)
    with torch.no_grad():
        before = [p.clone() for p in params]
        flat.add_(1.0)
        assert all(torch.equal(p, b + 1) for p, b in zip(params, before))
        flat.sub_(1.0)


@pytest.mark.parametrize("buffers", ["copy", "ema"])
@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.AdamW])
def test_matches_reference_loop_after_optimizer_steps(buffers, opt_cls):
    student = _model()
    ref_t = copy.deepcopy(student)
    teacher = EMATeacher(student, buffers=buffers)  # before the optimizer, as the trainer does
    strides = [p.stride() for p in ref_t.parameters()]
    assert [p.stride() for p in student.parameters()] == strides  # channels_last kept
    opt = opt_cls(student.parameters(), lr=0.1, **({"momentum": 0.9, "nesterov": True} if opt_cls is torch.optim.SGD else {}))
    decay = torch.tensor(0.0, dtype=torch.float64)
    with torch.no_grad():
        for step in range(4):
            decay.fill_(min(0.9, step / (step + 1)))  # warm-up: the same tensor mutated, as the trainer will
            with torch.enable_grad():
                _train_step(student, opt, step)
            teacher.update(decay)
            _reference_update(ref_t, student, decay, buffers)
    teacher.check_aliasing()
    for (k, a), b in zip(teacher.state_dict().items(), ref_t.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=k)
    assert not any(p.requires_grad for p in teacher.module.parameters())


def test_one_flat_buffer_and_aliasing():
    student = _model()
    teacher = EMATeacher(student)
    assert len(teacher._param_flats) == 1 and len(teacher._buf_flats) == 1
    (t_flat, s_flat), = teacher._param_flats
    _assert_views(s_flat, student.parameters())
    _assert_views(t_flat, teacher.module.parameters())
    student.to(torch.float32)  # replacing the parameters breaks the aliasing: update refuses to run
    with pytest.raises(RuntimeError, match="build the teacher after moving"):
        teacher.update(torch.tensor(0.5))


def test_mixed_dtypes_one_launch_each():
    student = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2).to(torch.float64))
    teacher = EMATeacher(student)
    assert len(teacher._param_flats) == 2
    with torch.no_grad():
        for p in student.parameters():
            p.fill_(1.0)
    teacher.update(torch.tensor(0.0))
    assert all(torch.all(p == 1) for p in teacher.module.parameters())


def test_state_dict_round_trip_exact():
    student = _model()
    teacher = EMATeacher(student, buffers="ema")
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    for step in range(2):
        _train_step(student, opt, step)
        teacher.update(torch.tensor(0.7, dtype=torch.float64))
    sd = {k: v.clone() for k, v in teacher.state_dict().items()}
    fresh_student = _model()
    fresh = EMATeacher(fresh_student, buffers="ema")
    fresh.load_state_dict(sd)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd[k]), k
    fresh.check_aliasing()  # load_state_dict copies in place: the flat buffer still holds the teacher
    _assert_views(fresh._param_flats[0][0], fresh.module.parameters())
    assert set(sd) == {f"module.{k}" for k in student.state_dict()}


def test_bad_buffers_option():
    with pytest.raises(ValueError, match="'copy' or 'ema'"):
        EMATeacher(nn.Linear(2, 2), buffers="average")


def test_update_compiles_fullgraph():
    student = _model()
    teacher = EMATeacher(student)
    decay = torch.tensor(0.5, dtype=torch.float64)
    want = copy.deepcopy(teacher.module)
    _reference_update(want, student, decay, "copy")
    torch._dynamo.reset()
    torch.compile(teacher.update, backend="eager", fullgraph=True)(decay)
    for a, b in zip(teacher.module.state_dict().values(), want.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
def test_gpu_teacher_uses_one_triton_launch():
    student = _model(torch.float32).cuda()
    ref_t = copy.deepcopy(student)
    teacher = EMATeacher(student)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    decay = torch.tensor(0.9, device="cuda")
    for step in range(3):
        x = torch.randn(4, 3, 9, 9, device="cuda").contiguous(memory_format=torch.channels_last)
        opt.zero_grad()
        student(x).square().mean().backward()
        opt.step()
        torch.cuda.set_sync_debug_mode("error")
        try:
            teacher.update(decay)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        with torch.no_grad():
            _reference_update(ref_t, student, decay, "copy")
    for a, b in zip(teacher.module.state_dict().values(), ref_t.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        teacher.update(decay)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert sum("_ema_kernel" in n for n in names) == 1, names


def test_update_is_one_call_per_dtype(monkeypatch):
    calls = []
    real = ema_mod.ema_update_
    monkeypatch.setattr(ema_mod, "ema_update_", lambda e, p, d: calls.append((len(e), len(p))) or real(e, p, d))
    EMATeacher(_model(), buffers="copy").update(torch.tensor(0.5, dtype=torch.float64))
    assert calls == [(1, 1)]  # all parameters: one flat pair
    calls.clear()
    EMATeacher(_model(), buffers="ema").update(torch.tensor(0.5, dtype=torch.float64))
    assert calls == [(1, 1), (1, 1)]  # parameters, then the BN statistics


@pytest.mark.parametrize("buffers", ["copy", "ema"])
def test_triton_kernel_path_matches_reference_loop(monkeypatch, buffers):
    """The teacher driving the Triton kernel itself (interpreter), padding between tensors included."""
    monkeypatch.setattr(ema_mod, "ema_update_", functools.partial(ema_update_, impl="triton"))
    student = _model()
    ref_t = copy.deepcopy(student)
    teacher = EMATeacher(student, buffers=buffers)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    decay = torch.tensor(0.8, dtype=torch.float64)
    for step in range(2):
        _train_step(student, opt, step)
        teacher.update(decay)
        with torch.no_grad():
            _reference_update(ref_t, student, decay, buffers)
    for a, b in zip(teacher.state_dict().values(), ref_t.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.all(teacher._param_flats[0][0][-1] == 0)  # padding stays 0
