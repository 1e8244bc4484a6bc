"""Step for step against the authors' code: one MUST training run of must-cli and of salesforce/MUST.

    python -m benchmarks.reference_check --ref ../shared/reference/salesforce-MUST [--shape tiny|b16|all]

Builds the reference ``VisionTransformer_MIM`` (its clip/model.py: [MSK], ln_patch, decoder) and
must-cli's ``MustModel`` from the same random weights, runs the reference's own
``train_one_epoch`` (engine_self_training.py) with its ``create_optimizer`` layer-decay groups
(optim_factory.py), ``ModelEma`` (ema.py) and ``cosine_scheduler`` (utils.py) next to must-cli's
``train_epoch`` on the same weak/strong tensors, masks and classifier, two steps (one at the ViT-B/16 shape), fp32 on CPU,
and compares every loss term, gradient, parameter, teacher weight, lr and weight decay. The
views and the masking draw from different random streams, so their parameters are compared.
The reference is imported unmodified: names that current PyTorch and the venv lack are
provided here (see ``import_reference``). Exit status 1 if any comparison fails.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import math
import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU, VisionTransformer
from torch import nn

from must_cli.base.config import MustConfig
from must_cli.method.engine import METRIC_NAMES, TrainState, train_epoch
from must_cli.method.losses import self_training_loss
from must_cli.method.masking import MaskGenerator
from must_cli.method.model import MustModel, Preprocess
from must_cli.method.schedule import ema_update
from must_cli.training.builder import build_training
from must_cli.method.views import strong_view, weak_view

SHAPES = {  # width, layers, heads, patch, image, embed dim, classes, batch; classifier column norm chosen so
    # that random weights give teacher confidences spread over (0, 1) rather than all 1.0 at logit scale 100
    "tiny": dict(width=64, layers=2, heads=4, patch=8, image=32, dim=32, classes=5, batch=8, norm=0.1),
    "b16": dict(width=768, layers=12, heads=12, patch=16, image=224, dim=512, classes=1000, batch=2, norm=1.0),
}
LOSS_TOL, GRAD_TOL = 1e-5, 1e-4
STEP_TOL = 1e-3  # |param update difference| / (lr of the group), on elements where Adam is well conditioned
FP32_EPS = float(torch.finfo(torch.float32).eps)  # weights differ by up to one ulp after rounding, on top
ADAM_EPS = 1e-8  # AdamW eps of both (optim_factory.py via train.py --opt_eps; torch's default here)
EMA_TOL = 1e-6  # |teacher difference| / max|teacher| of the tensor, same elements
MAGNITUDE_MAX = ("RandAugment magnitude_max 9.99 (reference: 10): at 10, timm's PosterizeIncreasing keeps 0 bits, "
                 "which Pillow >= 10 refuses; only magnitudes drawn above 9.99 (m 9, std 0.5) are clipped lower")
HP = dict(w_fair=1.0, w_align=0.2, mu0=0.99, mu_final=0.9998, warm_it=100, lr=1e-3, min_lr=1e-6, wd=0.05, ld=0.65)


def _old_sdpa(q, k, v, attn_mask=None, dropout_p=0.0):
    """torch < 1.13's private F._scaled_dot_product_attention(q, k, v, mask, p) -> (out, weights)."""
    attn = torch.bmm(q / math.sqrt(q.shape[-1]), k.transpose(-2, -1))
    if attn_mask is not None:
        attn = attn + attn_mask
    attn = F.dropout(attn.softmax(dim=-1), p=dropout_p)
    return torch.bmm(attn, v), attn


def import_reference(ref: Path) -> dict[str, types.ModuleType]:
    """Import the reference unmodified; give it the names it imports that no longer exist here.

    Only import-time names: F._scaled_dot_product_attention (clip/model.py:29; nn.MultiheadAttention
    is what its blocks run), torch._six.inf, and modules for logging/metrics it never calls here.
    """
    if not hasattr(F, "_scaled_dot_product_attention"):
        F._scaled_dot_product_attention = _old_sdpa
    needed = {"torch._six": {"inf": math.inf}, "tensorboardX": {"SummaryWriter": object}, "sklearn": {"metrics": None},
              "timm.optim.novograd": {"NovoGrad": object}, "timm.optim.nadam": {"Nadam": object},
              "timm.optim.radam": {"RAdam": object}}  # optimisers it imports but never builds for adamw
    for name, attrs in needed.items():
        try:
            module = importlib.import_module(name)
        except ImportError:
            module = sys.modules[name] = types.ModuleType(name)
        for attr, value in attrs.items():
            if not hasattr(module, attr):
                setattr(module, attr, value)
    mods = {n: _load(n, ref / f"{n}.py") for n in ("utils", "engine_self_training", "optim_factory", "ema",
                                                    "build_dataset")}  # utils first: engine_self_training imports it
    return {"clip_model": _load("ref_clip_model", ref / "clip" / "model.py"), **mods}


def _load(name: str, path: Path) -> types.ModuleType:
    """Import one file of the reference under ``name``, registered so that its siblings' ``import name`` finds it."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RefClassifier(nn.Module):
    """The reference's clip_classifier (model.py) without CLIP loading: names model.visual.*."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.model = nn.Module()
        self.model.visual = visual

    def forward(self, images, **kw):
        return self.model.visual(images, **kw)


def our_name(ref_name: str) -> str:
    rest = ref_name.removeprefix("model.visual.")
    if rest == "mask_token_embedding":
        return "mask_token"
    if rest == "classifier" or rest.startswith(("ln_patch.", "decoder.")):
        return rest
    return "visual." + rest


def build_pair(ref, s: dict, seed: int) -> tuple[RefClassifier, MustModel]:
    torch.manual_seed(seed)
    vit = ref["clip_model"].VisionTransformer_MIM(s["image"], s["patch"], s["width"], s["layers"], s["heads"],
                                                  s["dim"], mask=True)
    vit.classifier = nn.Parameter(s["norm"] * F.normalize(torch.randn(s["dim"], s["classes"]), dim=0))
    with torch.no_grad():  # make norms and biases non-trivial, so their gradients are checked too
        for n, p in vit.named_parameters():
            if p.ndim == 1 and n != "class_embedding":
                p.add_(0.05 * torch.randn_like(p))
    visual = VisionTransformer(s["image"], s["patch"], s["width"], s["layers"], s["heads"], 4.0,
                               output_dim=s["dim"], act_layer=QuickGELU)
    ours = MustModel(visual, vit.classifier.data, logit_scale=100.0)  # the reference hard-codes 100
    src = {our_name("model.visual." + k): v for k, v in vit.state_dict().items()}
    src["mask_token"] = src["mask_token"].reshape(-1)
    missing, unexpected = ours.load_state_dict(src, strict=False)
    assert missing == ["logit_scale"] and not unexpected, (missing, unexpected)
    return RefClassifier(vit), ours


def record_decoder(decoder: nn.Module) -> list:
    """(input, output) of each decoder call: where L1's sign(residual) decides the MIM gradient."""
    seen: list = []
    decoder.register_forward_hook(lambda m, i, o: seen.append((i[0].detach().clone(), o.detach().clone())))
    return seen


def l1_sign_flips(r: dict, o: dict, data: list, s: dict, i: int) -> tuple[int, float]:
    """Masked pixels whose reconstruction residual has another sign in the two runs, and the most
    that can move one decoder gradient element: each flip moves it by <= 2 |decoder input| / (3 n)."""
    (zr, xr), (_, xo) = r["decoded"][i], o["decoded"][i]
    p, g = s["patch"], s["image"] // s["patch"]
    pm = data[i]["mask"].reshape(-1, 1, g, g).repeat_interleave(p, 2).repeat_interleave(p, 3).expand_as(xr).bool()
    flips = int(((xr - data[i]["strong"]).sign() != (xo - data[i]["strong"]).sign())[pm].sum())
    n = pm[:, :1].sum().item()
    return flips, flips * 2 * max(1.0, zr.abs().max().item()) / (3 * n)


class StepLog:
    """Stands in for the reference's TensorboardLogger: what it logs, one dict per step."""

    def __init__(self):
        self.steps, self.current = [], {}

    def update(self, head=None, step=None, **values):
        self.current.update(values)

    def set_step(self, step=None):
        self.steps.append(self.current)
        self.current = {}


class Recorder:
    """Per optimiser step: gradients, lr and weight decay before it; parameters after it."""

    def __init__(self, opt: torch.optim.Optimizer, names: dict[nn.Parameter, str]):
        self.grads, self.params, self.lrs = [], [], []
        opt.register_step_pre_hook(lambda o, a, k: self._pre(o, names))
        opt.register_step_post_hook(lambda o, a, k: self.params.append(
            {names[p]: p.detach().clone() for g in o.param_groups for p in g["params"]}))

    def _pre(self, opt, names):
        self.grads.append({names[p]: p.grad.detach().clone() for g in opt.param_groups for p in g["params"]})
        self.lrs.append({names[p]: (g["lr"], g["lr_scale"], g["weight_decay"])
                         for g in opt.param_groups for p in g["params"]})


def run_reference(ref, model: RefClassifier, data: list, s: dict, tau: float, running: bool) -> dict:
    """Two steps of the reference's train_one_epoch; everything it computed, by must-cli's names."""
    args = types.SimpleNamespace(opt="adamw", weight_decay=HP["wd"], lr=HP["lr"] * s["batch"] / 256, opt_eps=1e-8,
                                 opt_betas=None, momentum=0.9, mask=True, model_ema_decay=HP["mu_final"],
                                 nb_classes=512 if running else s["classes"])
    layers = s["layers"]
    assigner = ref["optim_factory"].LayerDecayValueAssigner([HP["ld"] ** (layers + 1 - i) for i in range(layers + 2)])
    with contextlib.redirect_stdout(io.StringIO()):
        opt = ref["optim_factory"].create_optimizer(args, model, get_num_layer=assigner.get_layer_id,
                                                    get_layer_scale=assigner.get_scale)
        ema = ref["ema"].ModelEma(model, decay=HP["mu_final"])
        lrs = ref["utils"].cosine_scheduler(args.lr, HP["min_lr"] * s["batch"] / 256, 1, len(data))
    rec = Recorder(opt, {p: our_name(n) for n, p in model.named_parameters()})
    teachers, decays, teacher_logits = [], [], []
    ema.ema.register_forward_hook(lambda m, i, o: teacher_logits.append(o.detach().clone()))
    decoded = record_decoder(model.model.visual.decoder)
    update = ema.update

    def update_and_record(m):
        update(m)
        decays.append(ema.decay)
        teachers.append({our_name(n): p.detach().clone() for n, p in ema.ema.named_parameters()})

    ema.update = update_and_record
    writer = StepLog()
    tc = {"model_ema_decay_init": HP["mu0"], "warm_it": HP["warm_it"], "conf_threshold": tau,
          "w_fair": HP["w_fair"], "w_align": HP["w_align"]}
    loader = [((d["weak"], d["strong"], d["mask"].reshape(-1, s["image"] // s["patch"], s["image"] // s["patch"])
                .long()), torch.zeros(len(d["weak"]), dtype=torch.long)) for d in data]
    with mock.patch("torch.cuda.synchronize", lambda *a: None), \
            mock.patch("torch.distributed.get_world_size", lambda *a: 1), contextlib.redirect_stdout(io.StringIO()):
        ref["engine_self_training"].train_one_epoch(
            model, args, tc, loader, opt, contextlib.suppress, torch.device("cpu"), 0, None, log_writer=writer,
            start_steps=0, lr_schedule_values=lrs, model_ema=ema)
    terms = [{"loss_cls": lg["loss_st"], "loss_fair": lg["loss_fair"], "loss_mim": lg["loss_mim"],
              "loss_align": lg["loss_align"], "kept": float(lg["conf_ratio"]) * s["batch"]} for lg in writer.steps]
    return {"terms": terms, "grads": rec.grads, "params": rec.params, "lrs": rec.lrs, "teachers": teachers,
            "decays": decays, "teacher_logits": teacher_logits, "decoded": decoded}


def run_ours(model: MustModel, data: list, s: dict, tau: float, running: bool, ref_run: dict) -> dict:
    """The same steps through must-cli's train_epoch, recorded the same way.

    Before step i > 0 the student and teacher take the reference's weights after step i - 1, so each
    step is compared from the same start: otherwise the few elements where Adam's step is set by
    rounding (see ADAM_EPS) carry a difference of up to one lr into the next step's gradients.
    """
    cfg = MustConfig(threshold=tau, w_fair=HP["w_fair"], w_align=HP["w_align"], ema_mu0=HP["mu0"],
                     ema_mu_final=HP["mu_final"], ema_mu_steps=HP["warm_it"], ema_ref_batch=s["batch"],
                     fair_ref_batch=s["batch"],
                     fair_running_classes=min(512, s["classes"]) if running else s["classes"] + 1,
                     weight_decay=HP["wd"], layer_decay=HP["ld"], batch_size=s["batch"])
    nets = build_training(model, cfg, torch.device("cpu"), s["image"], optimizer_kind="plain").nets  # as adapt builds
    teacher, opt = nets.teacher, nets.optimizer  # plain AdamW: the reference's per-tensor update, eps 1e-8
    peak, floor = HP["lr"] * s["batch"] / 256, HP["min_lr"] * s["batch"] / 256
    rec = Recorder(opt, {p: n for n, p in model.named_parameters()})
    teachers, decays, teacher_logits, terms = [], [], [], []
    teacher.register_forward_hook(lambda m, i, o: teacher_logits.append(o.detach().clone()))
    decoded = record_decoder(model.decoder)

    def ema_and_record(t, st, decay):
        ema_update(t, st, decay)
        decays.append(decay)
        teachers.append({n: p.detach().clone() for n, p in t.named_parameters()})

    def on_step(state, m, h, lr):
        terms.append({k: (m[METRIC_NAMES.index(k)] / s["batch"]).item() for k in METRIC_NAMES[1:5]}
                     | {"kept": m[METRIC_NAMES.index("kept")].item()})
        return False

    state = TrainState()
    for i, batch in enumerate(data):
        if i:
            load_weights(model, ref_run["params"][i - 1])
            load_weights(teacher, ref_run["teachers"][i - 1])
        with mock.patch("must_cli.method.engine.ema_update", ema_and_record):
            train_epoch(model, teacher, opt, [batch], cfg, state, len(data), peak, floor, torch.device("cpu"),
                        contextlib.nullcontext, on_step)
    return {"terms": terms, "grads": rec.grads, "params": rec.params, "lrs": rec.lrs, "teachers": teachers,
            "decays": decays, "teacher_logits": teacher_logits, "decoded": decoded}


@torch.no_grad()
def load_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    for n, p in model.named_parameters():
        p.copy_(weights[n].reshape(p.shape))


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


class Report:
    def __init__(self):
        self.ok = True

    def check(self, what: str, value: float | str, passed: bool, limit: str) -> None:
        self.ok &= passed
        shown = f"{value:.3g}" if isinstance(value, float) else value
        print(f"  {'ok  ' if passed else 'FAIL'} {what:<44} {shown:<14} {limit}")


def compare_step(rep: Report, r: dict, o: dict, i: int, tau: float, before: dict, agree: dict, data: list,
                 s: dict) -> None:
    """Step i: pseudo-labels, loss terms, gradients, lr/wd, parameters and teacher after it."""
    pr, po = r["teacher_logits"][i].softmax(-1), o["teacher_logits"][i].float().softmax(dim=1)
    keep_r = pr.max(-1)[0] > tau  # engine_self_training.py:46-47
    keep_o = self_training_loss(po, po, tau)[1]
    rep.check("pseudo-labels identical", f"{int((pr.argmax(-1) == po.argmax(1)).sum())}/{len(pr)}",
              torch.equal(pr.argmax(-1), po.argmax(1)), "identical")
    rep.check("kept mask identical", f"{int(keep_o.sum())} kept", torch.equal(keep_r, keep_o)
              and r["terms"][i]["kept"] == o["terms"][i]["kept"] == keep_o.sum().item(), "identical")
    for k in ("loss_cls", "loss_fair", "loss_mim", "loss_align"):
        rep.check(f"{k} = {o['terms'][i][k]:.6g}", rel(o["terms"][i][k], r["terms"][i][k]),
                  rel(o["terms"][i][k], r["terms"][i][k]) <= LOSS_TOL, f"rel <= {LOSS_TOL:g}")
    flips, bound = l1_sign_flips(r, o, data, s, i)
    norms, coss = {}, {}
    for n, gr in r["grads"][i].items():
        if flips and n.startswith("decoder."):
            worst = (o["grads"][i][n] - gr).abs().max().item()
            rep.check(f"{n} grad: {flips} L1 sign flip(s)", worst, worst <= bound * (1 + 1e-3),
                      f"<= {bound:.3g}, what the flips allow")
            agree[n] &= ((o["grads"][i][n] - gr).abs() <= GRAD_TOL * gr.abs()).reshape(-1)  # flipped: not compared
            continue
        gr, go = gr.reshape(-1).double(), o["grads"][i][n].reshape(-1).double()
        norms[n] = rel(go.norm().item(), gr.norm().item())
        coss[n] = 1 - F.cosine_similarity(go, gr, dim=0).item()
        # Adam's step is lr * g / (|g| + eps): where |g| is near eps its size follows g, so the two
        # gradients' rounding difference alone moves it by |dg| eps / (|g| + eps)^2 lr. Those elements
        # (sign flips included) are not comparable at STEP_TOL; they are counted, not hidden.
        agree[n] &= (go - gr).abs() * ADAM_EPS / (gr.abs() + ADAM_EPS) ** 2 <= STEP_TOL
        if i:  # from step 2 Adam's step follows g2 / g1, so a relative gradient difference carries over 1:1
            agree[n] &= (go - gr).abs() <= STEP_TOL * gr.abs()
    worst_norm, worst_cos = max(norms, key=norms.get), max(coss, key=coss.get)
    rep.check(f"gradient norms, {len(norms)} tensors (worst {worst_norm})", norms[worst_norm],
              norms[worst_norm] <= GRAD_TOL, f"rel <= {GRAD_TOL:g}")
    rep.check(f"gradients 1 - cosine (worst {worst_cos})", coss[worst_cos], coss[worst_cos] <= GRAD_TOL,
              f"<= {GRAD_TOL:g}")
    same = all(o["lrs"][i][n][1:] == v[1:] and rel(o["lrs"][i][n][0], v[0]) <= 1e-12 for n, v in r["lrs"][i].items())
    rep.check("lr, lr_scale, weight_decay of every param", "same" if same else "differ", same,
              "scale/wd identical, lr rel <= 1e-12")
    compare_weights(rep, "params after AdamW step", r["params"][i], o["params"][i], before, agree,
                    {n: v[0] for n, v in r["lrs"][i].items()}, STEP_TOL)
    compare_weights(rep, "EMA teacher after update", r["teachers"][i], o["teachers"][i], None, agree, None, EMA_TOL)
    rep.check(f"EMA decay = {o['decays'][i]:.8f}", rel(o["decays"][i], r["decays"][i]),
              rel(o["decays"][i], r["decays"][i]) <= 1e-12, "rel <= 1e-12")


def compare_weights(rep: Report, what: str, ref: dict, ours: dict, before: dict | None, agree: dict,
                    lrs: dict | None, tol: float) -> None:
    """Elementwise on elements whose gradients agreed at every step so far; the rest counted and shown."""
    worst, excluded, worst_excluded, total = 0.0, 0, 0.0, 0
    for n, wr in ref.items():
        wr, wo = wr.reshape(-1).double(), ours[n].reshape(-1).double()
        scale = lrs[n] if lrs is not None else wr.abs().max().item()  # step size, or the tensor's size
        if before is not None:  # compare the update, so a tolerance relative to the lr means something
            wr, wo = wr - before[n].reshape(-1).double(), wo - before[n].reshape(-1).double()
        # each side rounds the new weight to fp32: half an ulp each, which no tolerance on the step can beat
        ulp = FP32_EPS * torch.maximum(ref[n].reshape(-1).double().abs(), ours[n].reshape(-1).double().abs())
        diff = ((wo - wr).abs() - ulp).clamp_min(0) / max(scale, 1e-30)
        worst = max(worst, diff[agree[n]].max().item() if agree[n].any() else 0.0)
        excluded += int((~agree[n]).sum())
        worst_excluded = max(worst_excluded, diff[~agree[n]].max().item() if (~agree[n]).any() else 0.0)
        total += wr.numel()
    unit = "of lr" if before is not None else "of max|w|"
    rep.check(f"{what}", worst, worst <= tol, f"<= {tol:g} {unit}")
    print(f"       excluded {excluded} of {total} elements (|g| near Adam's eps; from step 2 also gradients 1e-3 apart, as after an L1 sign flip); "
          f"worst there {worst_excluded:.3g} {unit}")


def describe(transform) -> list[tuple]:
    """A view pipeline as comparable parameters (class names differ between timm and torchvision)."""
    out = []
    for t in getattr(transform, "transforms", [transform]):
        kind = type(t).__name__
        interp = str(getattr(t, "interpolation", "")).lower().split(".")[-1].replace("interpolationmode", "")
        if "ResizedCrop" in kind:
            out.append(("random-resized-crop", t.size, tuple(map(float, t.scale)), tuple(round(r, 6) for r in t.ratio),
                        interp))
        elif kind == "Resize":
            out.append(("resize", t.size, interp))
        elif kind in ("RandomCrop", "CenterCrop", "RandomHorizontalFlip"):
            out.append((kind, getattr(t, "size", None), getattr(t, "p", None)))
        elif kind == "RandAugment":
            ops = [(o.name, o.prob, o.magnitude, o.magnitude_std, o.magnitude_max or 10.0,
                    tuple(map(str, np.atleast_1d(o.kwargs["resample"]))), o.kwargs["fillcolor"]) for o in t.ops]
            out.append(("randaugment", t.num_layers, t.choice_weights, tuple(ops)))
        elif kind in ("ToTensor", "MaybeToTensor"):
            out.append(("to-tensor",))
        elif kind == "Normalize":
            out.append(("normalize", tuple(np.round(np.asarray(t.mean, float), 6)), tuple(np.round(np.asarray(t.std, float), 6))))
        else:
            out.append((kind,))
    return out


def compare_views(rep: Report, ref: dict) -> None:
    """Weak and strong views and mask counts at the paper's ImageNet ViT-B/16 setting (train.py defaults)."""
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    args = types.SimpleNamespace(input_size=224, image_mean=mean, image_std=std, train_crop_min=0.3, color_jitter=0.0,
                                 aa="rand-m9-mstd0.5-inc1", train_interpolation="bicubic")
    tc = {"mask_patch_size": 32, "model_patch_size": 16, "mask_ratio": 0.3}
    aug = ref["build_dataset"].build_transform(True, args, tc)
    pre = Preprocess(224, mean, std, "bicubic")
    for name, r, o in (("weak view", aug.transforms[0], weak_view(pre, MustConfig())),
                       ("strong view", aug.transforms[1], strong_view(pre, MustConfig()))):
        dr, do = describe(r), describe(o)
        if name == "strong view":  # stated exception, see MAGNITUDE_MAX
            dr, do = (str(d).replace("9.99", "10.0") for d in (dr, do))
            print(f"       excluded: {MAGNITUDE_MAX}")
        rep.check(f"{name}: {len(describe(o))} transforms, same parameters", "same" if dr == do else "differ",
                  dr == do, "identical")
        if dr != do:
            print("       reference:", dr, "\n       must-cli: ", do)
    ours = MaskGenerator(224, 16, 32, 0.3)
    counts_r = {int(aug.mask_generator().sum()) for _ in range(20)}
    counts_o = {int(ours(np.random.default_rng(i)).sum()) for i in range(20)}
    rep.check("masked tokens per image", f"{counts_o} vs {counts_r}", counts_o == counts_r, "identical")


def check_shape(rep: Report, ref: dict, shape: str, running: bool, steps: int, seed: int = 0) -> None:
    s = SHAPES[shape]
    print(f"\n{shape} (width {s['width']}, {s['layers']} layers, patch {s['patch']}, {s['image']} px, "
          f"K {s['classes']}, batch {s['batch']}), fairness {'running average' if running else 'batch'}:")
    ref_model, ours = build_pair(ref, s, seed)
    gen = torch.Generator().manual_seed(seed)
    masks = MaskGenerator(s["image"], s["patch"], 2 * s["patch"], 0.3)
    data = [{"weak": torch.randn(s["batch"], 3, s["image"], s["image"], generator=gen),
             "strong": torch.randn(s["batch"], 3, s["image"], s["image"], generator=gen),
             "mask": torch.from_numpy(np.stack([masks(np.random.default_rng(seed * 100 + j)) for j in range(s["batch"])]))}
            for _ in range(steps)]
    with torch.no_grad():  # tau halfway between the middle confidences: both kept and dropped images
        conf = torch.cat([ref_model(d["weak"]).softmax(-1).max(-1)[0] for d in data]).sort()[0]
    mid = len(conf) // 2  # with one batch of 2: one kept, one dropped
    tau = float((conf[mid - 1] + conf[mid]) / 2)
    print(f"  tau {tau:.6f}, margin to the nearest confidence {float(conf[mid] - conf[mid - 1]) / 2:.2e}")
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    r = run_reference(ref, ref_model, data, s, tau, running)
    o = run_ours(ours, data, s, tau, running, r)
    agree = {n: torch.ones(p.numel(), dtype=torch.bool) for n, p in before.items()}  # over steps: Adam remembers
    for i in range(len(data)):
        print(f" step {i + 1}" + (" (from the reference's weights after step 1)" if i else "") + ":")
        compare_step(rep, r, o, i, tau, before if i == 0 else r["params"][i - 1], agree, data, s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ref", type=Path, required=True, help="the salesforce-MUST folder")
    parser.add_argument("--shape", choices=["tiny", "b16", "all"], default="all")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ref = import_reference(args.ref.resolve())
    rep = Report()
    print(f"must-cli vs {args.ref} (fp32, CPU, torch {torch.__version__})", flush=True)
    print(f"tolerances: loss terms rel {LOSS_TOL:g}; gradients rel norm and 1 - cos {GRAD_TOL:g}; "
          f"parameter updates {STEP_TOL:g} x lr and teacher {EMA_TOL:g} x max|w| elementwise beyond one fp32 ulp of the weight, lr 1e-3 per 256 images "
          "so steps are well above that ulp; excluding elements "
          "where |g| is so near Adam's eps that the two gradients' rounding difference alone moves the step by more "
          "than that (|dg| eps / (|g| + eps)^2 > 1e-3), and from step 2, where Adam's step follows g2/g1, "
          "elements whose gradients differ by more than 1e-3 relative; counts printed")
    compare_views(rep, ref)
    if args.shape in ("tiny", "all"):
        check_shape(rep, ref, "tiny", running=False, steps=2)
        check_shape(rep, ref, "tiny", running=True, steps=2)
    if args.shape in ("b16", "all"):  # one step: two hold ~12 copies of 86M weights, too many for a shared 2-core box
        check_shape(rep, ref, "b16", running=True, steps=1)
    print("\nALL CHECKS PASS" if rep.ok else "\nSOME CHECKS FAIL")
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
