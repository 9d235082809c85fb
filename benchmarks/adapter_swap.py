"""Adapter swap: switching between generated adapters without re-injecting LoRA layers.

Operations timed (median of --repeats, milliseconds), all through peft-hyper's public API:
  set_adapter   switch the active adapter among resident generated adapters (`tuner.set_adapter(name)`)
  hotswap       load a new generated state dict into an existing slot (`load_generated_adapter(sd, existing_name)`:
                checked, then copied in place into the slot's parameters)
  disk+hotswap  the `load_adapter`-from-disk equivalent: `safetensors.torch.load_file` of a saved adapter
                (`save_adapter`) + hotswap into an existing slot
  new name      re-injection: `load_generated_adapter(sd, new_name)` adds a new adapter slot to every LoRA layer
                (PEFT's `inject_adapter` walks the whole model); the slot is deleted afterwards (not timed)
  first load    the first adapter ever loaded: creates PEFT's LoRA layers (module replacement), timed once

Re-injection is detected, not assumed: before and after each operation we record every `LoraLayer` module (name and
object identity) and the adapter slots each one holds; a replaced module or a new slot counts as an injection.
Adapters have the exact generated shape (rank r + bias_rank on each target); their values are random unless
--real-adapters is given (then they come from `generate_adapter` on short clips). Example:

    python benchmarks/adapter_swap.py --arch 500M --repeats 30
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from ttft import random_adapter  # noqa: E402

from peft_hyper.generated_adapters import module_name_of_key  # noqa: E402


def lora_layout(model: torch.nn.Module) -> dict[str, tuple[int, tuple[str, ...]]]:
    from peft.tuners.lora import LoraLayer

    return {
        name: (id(m), tuple(sorted(m.lora_A.keys()))) for name, m in model.named_modules() if isinstance(m, LoraLayer)
    }


def injections(before: dict, after: dict) -> dict[str, int]:
    replaced = sum(1 for name in after if name in before and before[name][0] != after[name][0])
    added_modules = sum(1 for name in after if name not in before)
    new_slots = sum(len(set(after[n][1]) - set(before.get(n, (0, ()))[1])) for n in after)
    return {"replaced_modules": replaced, "new_modules": added_modules, "new_slots": new_slots}


def run_arch(args, arch: str, work: Path) -> dict:
    from safetensors.torch import load_file

    built = common.build(arch, 1, args.device, args.dtype, args.seed)
    model, tuner, device = built["model"], built["tuner"], args.device
    n = args.resident
    if args.real_adapters:
        paths = [str(common.make_video(work, arch, 2, seed)) for seed in range(n + 1)]
        adapters = [model.generate_adapter(p, num_frames=2) for p in paths]
    else:
        adapters = [random_adapter(tuner, seed) for seed in range(n + 1)]
    names = [f"clip{i}" for i in range(n)]

    layout0 = lora_layout(tuner.model)
    first_load, _, _ = common.timed(lambda: tuner.load_generated_adapter(adapters[0], names[0]), device)
    layout1 = lora_layout(tuner.model)
    first_injection = injections(layout0, layout1)
    for i in range(1, n):
        tuner.load_generated_adapter(adapters[i], names[i])
    tuner.save_adapter(names[1], work / "saved")
    disk_file = work / "saved" / "adapter_model.safetensors"

    def measure(op, label):
        walls, counts = [], {"replaced_modules": 0, "new_modules": 0, "new_slots": 0}
        for r in range(args.repeats):
            before = lora_layout(tuner.model)
            wall, _, _ = common.timed(lambda r=r: op(r), device)
            after = lora_layout(tuner.model)
            for key, value in injections(before, after).items():
                counts[key] += value
            walls.append(wall * 1e3)
            cleanup = getattr(op, "cleanup", None)
            if cleanup:
                cleanup(r)
        print(f"[{arch}] {label}: median {common.median(walls):.2f} ms, injections {counts}", flush=True)
        return {"ms": common.summary(walls), **counts}

    def set_adapter(r):
        tuner.set_adapter(names[r % n])

    def hotswap(r):
        tuner.load_generated_adapter(adapters[(r % n) + 1], names[0])

    def disk_hotswap(r):
        tuner.load_generated_adapter({k: v.to(device) for k, v in load_file(str(disk_file)).items()}, names[0])

    def new_name(r):
        tuner.load_generated_adapter(adapters[r % (n + 1)], f"extra{r}")

    def drop_new(r):
        tuner.delete_adapter(f"extra{r}")
        tuner.set_adapter(names[0])

    new_name.cleanup = drop_new

    # The lower bound of `hotswap`: the in-place copies alone, into parameters looked up once (no checks, no
    # activation). `hotswap` does the same copies after validating the state dict.
    slot_params = {}
    for key in adapters[0]:
        module, part = module_name_of_key(key)
        slot_params[key] = tuner.model.get_submodule(module).get_parameter(f"{part}.{names[0]}.weight")

    def direct_copy(r):
        with torch.no_grad():
            for key, value in adapters[(r % n) + 1].items():
                slot_params[key].copy_(value)

    ops = {}
    for key, op, label in (
        ("set_adapter", set_adapter, "set_adapter (resident)"),
        ("hotswap", hotswap, "hotswap into existing slot"),
        ("disk_hotswap", disk_hotswap, "load from disk + hotswap"),
        ("new_name", new_name, "load under a new name (re-injection)"),
        ("direct_copy", direct_copy, "lower bound: in-place copy into cached slot params"),
    ):
        op(0) if key != "new_name" else None  # warm-up
        ops[key] = measure(op, label)

    # PEFT merge-based switch for reference: unmerge the old adapter, merge the new one.
    def merged_switch(r):
        tuner.unmerge_adapter()
        tuner.set_adapter(names[r % n])
        tuner.merge_adapter()

    tuner.set_adapter(names[0])
    tuner.merge_adapter()
    ops["merged_switch"] = measure(merged_switch, "unmerge + set_adapter + merge")
    tuner.unmerge_adapter()

    adapter_bytes = sum(t.numel() * t.element_size() for t in adapters[0].values())
    return {
        "arch": arch,
        "resident": n,
        "lora_layers": len(layout1),
        "adapter_rank": tuner.hyper_config.total_rank,
        "adapter_mib": adapter_bytes / 2**20,
        "first_load_ms": first_load * 1e3,
        "first_injection": first_injection,
        "ops": ops,
        "goal_10ms_met": ops["hotswap"]["ms"]["median"] <= 10
        and ops["set_adapter"]["ms"]["median"] <= 10
        and ops["hotswap"]["replaced_modules"] == 0
        and ops["hotswap"]["new_slots"] == 0,
        "real_adapters": bool(args.real_adapters),
    }


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0], ["500M"], [1], 30)
    parser.add_argument("--resident", type=int, default=4, help="generated adapters kept resident")
    parser.add_argument("--real-adapters", action="store_true", help="generate the adapters from 2-frame clips")
    args = parser.parse_args()
    common.setup(args)
    result = {
        "benchmark": "adapter_swap",
        "args": vars(args),
        "machine": common.machine_info(args.device),
        "points": [],
    }
    with tempfile.TemporaryDirectory() as work:
        for arch in args.arch:
            result["points"].append(run_arch(args, arch, Path(work)))
    rows = []
    labels = {
        "set_adapter": "set_adapter among resident",
        "hotswap": "hotswap new state dict into slot",
        "disk_hotswap": "load_file from disk + hotswap",
        "new_name": "new name (re-injection)",
        "merged_switch": "merged: unmerge + set + merge",
        "direct_copy": "  lower bound: copy_ into cached slot params",
    }
    for point in result["points"]:
        rows.append(
            {
                "arch": point["arch"],
                "op": "first load (creates LoRA layers)",
                "ms": point["first_load_ms"],
                "replaced_modules": point["first_injection"]["replaced_modules"]
                + point["first_injection"]["new_modules"],
                "new_slots": point["first_injection"]["new_slots"],
            }
        )
        for key, label in labels.items():
            op = point["ops"][key]
            rows.append(
                {
                    "arch": point["arch"],
                    "op": label,
                    "ms": op["ms"]["median"],
                    "min_ms": op["ms"]["min"],
                    "replaced_modules": op["replaced_modules"] + op["new_modules"],
                    "new_slots": op["new_slots"],
                }
            )
    result["table"] = common.print_table(
        rows,
        [
            ("arch", "arch"),
            ("op", "operation"),
            ("ms", "median (ms)"),
            ("min_ms", "min (ms)"),
            ("replaced_modules", "modules replaced (all repeats)"),
            ("new_slots", "adapter slots added (all repeats)"),
        ],
        title=f"Adapter swap ({args.device}, {args.dtype}, {args.repeats} repeats)",
    )
    for point in result["points"]:
        print(
            f"[{point['arch']}] {point['lora_layers']} LoRA layers, rank {point['adapter_rank']}, adapter "
            f"{point['adapter_mib']:.2f} MiB; ≤10 ms with no re-injection: {point['goal_10ms_met']}"
        )
    common.finish(result, common.output_path(args, "adapter_swap"))


if __name__ == "__main__":
    main()
