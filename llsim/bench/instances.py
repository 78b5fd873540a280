"""Random allocation instances: clusters, networks, models and workloads the allocator never saw.

:func:`random_scenario` draws one scenario (a plain dict, validated by the caller) from a seeded
generator, as an outside check of the allocator would:

* 2-16 phones drawn from the six shipped phone profiles, 4 threads, RSSI uniform in
  [-78, -45] dBm each;
* infrastructure (an access point) or Wi-Fi Direct (the first phone is the group owner), 802.11n
  (20/40 MHz), ac or ax (20/40/80 MHz); power save on (the default) or off;
* a zoo model of the BLOOM, GPT-2, Llama or Qwen families in fp16 or int8;
* kv_cache or recompute mode; 1-8 requests in flight, 1-3 waves of them, 16-64 prompt tokens
  and 8-32 new tokens (recompute: up to 16);
* the latency or the throughput objective;
* tight memory (about one instance in three): every phone's available RAM scaled so the
  cluster's budget is only 1.1-1.6 x what the model needs (but the largest phone still holds the
  largest module with 20% to spare);
* a pinned header (about one instance in five): a random phone must run the first stage.

Instances whose model cannot fit the cluster at all, or with a phone whose signal is below the
weakest MCS of the channel, are redrawn (the allocator has nothing to
choose there). Everything is a function of the seed.
"""
from __future__ import annotations

import numpy as np

PHONES = ["snapdragon-8gen2", "tensor-g3", "kirin-990", "exynos-1380", "kirin-810", "helio-g85"]
MODELS = ["bloom-560m", "bloom-1b1", "bloom-1b7", "bloom-3b", "bloom-7b1", "gpt2-small", "gpt2-medium",
          "gpt2-large", "gpt2-xl", "llama-3.2-1b", "llama-3.2-3b", "llama-2-7b", "qwen2-1.5b"]


def _draw(rng: np.random.Generator, k: int, max_devices: int) -> dict:
    D = int(rng.integers(2, max_devices + 1))
    devices = [{"profile": PHONES[int(rng.integers(len(PHONES)))], "threads": 4,
                "rssi_dbm": round(float(rng.uniform(-78.0, -45.0)), 1)} for _ in range(D)]
    kind = "infrastructure" if rng.random() < 0.7 else "wifi_direct"
    standard = str(rng.choice(["n", "ac", "ax"]))
    width = int(rng.choice([20, 40] if standard == "n" else [20, 40, 80]))
    network = {"kind": kind, "standard": standard, "width_mhz": width}
    if rng.random() < 0.3:
        network["power_save"] = {"enabled": False}
    model = MODELS[int(rng.integers(len(MODELS)))]
    dtype = "int8" if rng.random() < 0.5 else "fp16"
    mode = "kv_cache" if rng.random() < 0.7 else "recompute"
    objective = "latency" if rng.random() < 0.5 else "throughput"
    n = int(rng.integers(1, 9))
    workload = {"prompt_tokens": int(rng.integers(16, 65)),
                "new_tokens": int(rng.integers(8, 33 if mode == "kv_cache" else 17)),
                "requests": n * int(rng.integers(1, 4)), "concurrency": n, "mode": mode}
    allocation = {"strategy": "milp", "objective": objective}
    if rng.random() < 0.2:
        allocation["header"] = int(rng.integers(D))
    return {"name": f"random-{k}", "model": model, "weight_dtype": dtype, "seed": k, "devices": devices,
            "network": network, "allocation": allocation, "workload": workload}


def random_scenario(seed: int, k: int, max_devices: int = 16) -> dict:
    """Instance ``k`` of the stream seeded by ``seed``: a scenario dict whose model fits its cluster."""
    from llsim.alloc.problem import build_problem
    from llsim.errors import LLSimError
    from llsim.scenario import validate_scenario
    from llsim.cluster import expand_devices

    rng = np.random.default_rng([seed, k])
    while True:
        data = _draw(rng, k, max_devices)
        tight = rng.random() < 1 / 3
        factor = float(rng.uniform(1.1, 1.6))
        try:
            sc = validate_scenario(data)
            devs = expand_devices(sc)
            pb = build_problem(sc, devs)
        except LLSimError:  # e.g. a signal below the weakest MCS of that channel width: no link at all
            continue
        need, have = pb.memory_need(), float(pb.budget.sum())
        if need > have:
            continue
        if tight:  # the budgets shrunk towards the model's need, every module still fitting some phone
            biggest = float((pb.weight_bytes + pb.kv_bytes + pb.act_bytes).max())
            scale = min(1.0, max(factor * need / have, 1.2 * biggest / float(pb.budget.max())))
            for spec, d in zip(data["devices"], devs):
                spec["ram_available_gb"] = round(d.budget_bytes / d.profile.memory.budget_fraction * scale / 1e9, 3)
            data["description"] = f"tight memory: budgets x{scale:.2f} ({factor:.2f} x the model's need)"
        return data


def random_scenarios(n: int, seed: int, max_devices: int = 16) -> list[dict]:
    return [random_scenario(seed, k, max_devices) for k in range(n)]
