"""What the GPU machine has, and how fast the demo architecture trains there (sizing the demo run).

    PYTHONPATH=. WORKBENCH_HOME=/tmp/wbh python3 bench/device_probe.py OUT.json
"""

import importlib
import json
import sys
import time

MODULES = ["mlflow", "flask", "flask_cors", "sqlalchemy", "alembic", "pandas", "pyarrow", "sklearn", "scipy",
           "matplotlib", "graphene", "gunicorn", "huey", "docker", "aiohttp", "cryptography", "skops", "peft",
           "psutil", "yaml", "PIL", "accelerate", "cachetools", "click", "cloudpickle", "databricks.sdk", "fastapi",
           "git", "opentelemetry.sdk", "opentelemetry.proto", "google.protobuf", "pydantic", "dotenv", "requests",
           "sqlparse", "starlette", "uvicorn", "anyio", "importlib_metadata", "markdown_it", "av", "deepspeed",
           "bitsandbytes", "flash_attn", "mlflow_tracing", "jinja2", "werkzeug", "itsdangerous", "blinker", "mako",
           "graphql", "gitdb", "smmap", "sklearn", "joblib", "threadpoolctl", "pytz", "tzdata", "dateutil",
           "google.auth", "opentelemetry.api", "typing_inspection", "zipp", "wrapt", "deprecated", "cffi", "idna",
           "h11", "websockets", "httpx", "multidict", "yarl", "aiosignal", "frozenlist", "propcache", "aiohappyeyeballs",
           "attr", "prometheus_client", "fsspec", "contourpy", "cycler", "fontTools", "kiwisolver", "pyparsing",
           "huey", "greenlet", "markupsafe", "charset_normalizer", "urllib3", "certifi", "sniffio", "annotated_types",
           "pydantic_core", "packaging", "numpy", "tqdm", "regex", "filelock", "safetensors", "torchvision"]


def main(out):
    found = {}
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
            found[name] = getattr(mod, "__version__", "yes")
        except Exception as exc:
            found[name] = f"MISSING ({type(exc).__name__})"
    result = {"modules": found}
    print("missing:", " ".join(k for k, v in found.items() if v.startswith("MISSING")), flush=True)
    import torch

    from workbench import demo

    init = demo.init_model("/tmp/demo-init-probe")
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(init).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch, seq = 64, 330
    ids = torch.randint(20, 200, (batch, seq), device="cuda")
    ids[:, 10:266] = model.config.image_token_id
    pixels = torch.randn(batch, 3, 448, 448, device="cuda")
    for dtype in (torch.float32, torch.bfloat16):
        times = []
        for i in range(25):
            torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                loss = model(input_ids=ids, pixel_values=pixels, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        result[f"step_s_{str(dtype).split('.')[-1]}_batch{batch}"] = sorted(times[5:])[len(times[5:]) // 2]
    from workbench import data, synthetic
    from transformers import AutoProcessor

    folder = synthetic.generate("/tmp/probe-data", synthetic.SyntheticConfig(samples=200))
    samples = data.load([folder])
    processor = AutoProcessor.from_pretrained(init)
    t = time.perf_counter()
    for s in samples:
        data.encode(s, processor, max_length=512, max_tiles=1)
    result["encode_s_per_sample"] = (time.perf_counter() - t) / len(samples)
    t = time.perf_counter()
    synthetic.generate("/tmp/probe-data2", synthetic.SyntheticConfig(samples=2000), workers=16)
    result["generate_2000_s_16_workers"] = time.perf_counter() - t
    json.dump(result, open(out, "w"), indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
