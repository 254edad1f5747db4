"""Serving compiled models on Triton Inference Server.

    exitc export-triton model.exitc --repo models/ [--name cls] [--max-batch-size 64] [--instances 1]
                        [--backend exitc|python] [--mode plain|continuous]
    exitc backend-dir          # where libtriton_exitc.so is: tritonserver --backend-directory <this>

`export_triton` writes a model-repository entry:

    models/<name>/config.pbtxt        inputs/outputs as in the artifact's manifest (dims without the
                                      batch dim), max_batch_size, dynamic batching, instance group,
                                      and the extra output exitc_exit_index (INT64 [1] per row)
    models/<name>/1/model.exitc/      a copy of the artifact
    models/<name>/1/model.py          --backend python only: a Python-backend model using exitc.load

The C++ backend (runtime/triton, libtriton_exitc.so) reads the parameters documented in
runtime/triton/config.hpp; `--mode continuous` turns on continuous depth-wise batching.
"""

from __future__ import annotations

import os
import shutil
import sys

from .errors import ExitcError
from .manifest import read_manifest

EXIT_INDEX_OUTPUT = "exitc_exit_index"
BACKEND_LIB = "libtriton_exitc.so"

_CONFIG_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
}


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def backend_dir_candidates() -> list[str]:
    """Directories that may hold exitc/libtriton_exitc.so, most specific first."""
    cands = []
    if os.environ.get("EXITC_TRITON_BACKEND_DIR"):
        cands.append(os.environ["EXITC_TRITON_BACKEND_DIR"])
    here = os.path.dirname(os.path.abspath(__file__))
    cands.append(os.path.join(here, "triton_backends"))
    root = _repo_root()
    cands.append(os.path.join(root, "build", "triton_backends"))
    for prefix in dict.fromkeys([sys.prefix, "/usr/local", "/usr"]):
        cands.append(os.path.join(prefix, "lib", "exitc", "triton_backends"))
    return cands


def backend_dir() -> str:
    """The backend directory (holding exitc/libtriton_exitc.so); ExitcError when not built."""
    for d in backend_dir_candidates():
        if os.path.isfile(os.path.join(d, "exitc", BACKEND_LIB)):
            return os.path.abspath(d)
    raise ExitcError(f"{BACKEND_LIB} not found (looked in {', '.join(backend_dir_candidates())}): build it with "
                     "`cmake --build build --target triton_exitc` or set EXITC_TRITON_BACKEND_DIR")


def _dims(spec: dict, what: str) -> list[int]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not shape:
        raise ExitcError(f"{what}: the manifest gives no shape (Triton needs a batch dimension)")
    if spec.get("batch_axis", 0) != 0:
        raise ExitcError(f"{what} is batched on axis {spec.get('batch_axis')}; Triton batches on axis 0")
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape[1:]]


def _config_type(spec: dict, what: str) -> str:
    t = _CONFIG_TYPES.get(spec.get("dtype"))
    if t is None:
        raise ExitcError(f"{what} has dtype {spec.get('dtype')!r}, which Triton's exitc backend does not serve")
    return t


def _io_block(kind: str, items: list[tuple[str, str, list[int]]]) -> str:
    lines = [f"{kind} ["]
    for i, (name, dtype, dims) in enumerate(items):
        sep = "," if i + 1 < len(items) else ""
        lines.append(f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(str(d) for d in dims)} ] }}{sep}')
    lines.append("]")
    return "\n".join(lines)


def config_pbtxt(manifest: dict, name: str, max_batch_size: int, instances: int, backend: str, mode: str,
                 max_queue_delay_us: int = 500, artifact: str = "model.exitc",
                 extra_parameters: dict[str, str] | None = None) -> str:
    inputs = [(s["name"], _config_type(s, f"input {s['name']!r}"), _dims(s, f"input {s['name']!r}"))
              for s in manifest["inputs"]]
    outputs = [(s["name"], _config_type(s, f"output {s['name']!r}"), _dims(s, f"output {s['name']!r}"))
               for s in manifest["outputs"]]
    outputs.append((EXIT_INDEX_OUTPUT, "TYPE_INT64", [1]))
    params = {"artifact": artifact}
    if backend == "exitc":
        params["mode"] = mode
    params.update(extra_parameters or {})
    param_text = ",\n".join(f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items())
    return "\n".join([
        f"# Written by exitc export-triton from {manifest.get('exitc_version', '?')} artifact "
        f"({len(manifest['segments'])} segments, {len(manifest['segments']) - 1} exits).",
        f'name: "{name}"',
        f'backend: "{backend}"',
        f"max_batch_size: {max_batch_size}",
        _io_block("input", inputs),
        _io_block("output", outputs),
        f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}",
        f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]",
        "parameters [", param_text, "]", ""])


PYTHON_MODEL = '''"""Triton Python-backend model written by `exitc export-triton --backend python`.

Runs the exitc artifact next to this file with exitc.load (C++ runtime when built, else the
Python reference runtime). Parameter `exitc_sys_path` (os.pathsep-separated) lists site
directories that hold exitc and its dependencies; they are added with site.addsitedir.
"""

import json
import os
import site

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        for p in params.get("exitc_sys_path", "").split(os.pathsep):
            if p:
                site.addsitedir(p)
        import exitc

        here = os.path.join(args["model_repository"], args["model_version"])
        self.model = exitc.load(os.path.join(here, params.get("artifact", "model.exitc")),
                                engine=params.get("engine", "auto"))
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        self.model_outputs = list(self.model.output_names)
        self.max_batch = int(config.get("max_batch_size", 0))
        kinds = pb_utils.MetricFamily.COUNTER
        self.rows_family = pb_utils.MetricFamily(name="exitc_python_rows_total",
                                                 description="Rows answered at each exit (python backend)", kind=kinds)
        n_exits = len(self.model.manifest["segments"]) - 1
        self.rows_metric = [self.rows_family.Metric(labels={"model": args["model_name"], "exit": str(e)})
                            for e in range(n_exits + 1)]
        # Agreement monitor (exitc.monitor): a share of the early rows also run at full depth.
        self.monitor = None
        rate = float(params.get("monitor_sample_rate", "0") or 0)
        if rate > 0:
            from exitc.monitor import AgreementMonitor

            self.model = self.monitor = AgreementMonitor(self.model, sample_rate=rate)

            def gauges(name, description, label, keys):
                # Families live as long as their metrics (Triton refuses to set a metric of a dead family).
                family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.GAUGE)
                return family, {k: family.Metric(labels={"model": args["model_name"], label: k}) for k in keys}

            self.agreement_family, self.agreement_metric = gauges(
                "exitc_python_agreement", "Live agreement with the original model: estimate, one-sided bounds at the "
                "artifact's confidence, certified target (agreement monitor; NaN until an early row is checked)",
                "value", ("estimate", "lower", "upper", "target"))
            self.checked_family, self.checked_metric = gauges(
                "exitc_python_monitor_rows", "Early rows checked at full depth, and how many of them the exit got "
                "wrong (agreement monitor)", "rows", ("sampled", "disagreements"))

    def _feeds(self, request):
        feeds = {}
        for name in self.input_names:
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is None:
                raise ValueError(f"missing input {name!r}")
            feeds[name] = t.as_numpy()
        return feeds

    def execute(self, requests):
        responses = [None] * len(requests)
        parsed = []
        for i, request in enumerate(requests):
            try:
                feeds = self._feeds(request)
                rows = {v.shape[0] if v.ndim else -1 for v in feeds.values()}
                if len(rows) != 1 or min(rows) < 1 or (self.max_batch and max(rows) > self.max_batch):
                    raise ValueError(f"bad batch sizes {sorted(rows)} (1..{self.max_batch})")
                parsed.append((i, feeds, rows.pop()))
            except Exception as exc:  # one bad request does not fail the others
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"exitc model: {exc}"))
        if parsed:
            try:
                merged = {n: np.concatenate([f[n] for _, f, _ in parsed]) for n in self.input_names}
                outputs, exit_index = self.model.run(merged)
                for e in range(len(self.rows_metric)):
                    self.rows_metric[e].increment(int(np.sum(exit_index == e)))
                if self.monitor is not None:
                    rep = self.monitor.report()
                    for k, v in (("estimate", rep.agreement_estimate), ("lower", rep.agreement_lower),
                                 ("upper", rep.agreement_upper), ("target", rep.target)):
                        self.agreement_metric[k].set(float(v))
                    self.checked_metric["sampled"].set(float(sum(rep.sampled)))
                    self.checked_metric["disagreements"].set(float(sum(rep.disagreements)))
                by_name = dict(zip(self.model_outputs, outputs))
                by_name["exitc_exit_index"] = np.asarray(exit_index, dtype=np.int64).reshape(-1, 1)
                row0 = 0
                for i, _, rows in parsed:
                    tensors = [pb_utils.Tensor(n, np.ascontiguousarray(by_name[n][row0:row0 + rows]))
                               for n in self.output_names]
                    responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                    row0 += rows
            except Exception as exc:
                for i, _, _ in parsed:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"exitc model: {exc}"))
        return responses
'''


def _default_sys_path() -> str:
    import site
    import sysconfig

    paths = [sysconfig.get_paths()["purelib"], *getattr(site, "getsitepackages", lambda: [])(), _repo_root()]
    return os.pathsep.join(dict.fromkeys(p for p in paths if os.path.isdir(p)))


def export_triton(artifact: str, repo: str, name: str | None = None, max_batch_size: int = 64, instances: int = 1,
                  backend: str = "exitc", mode: str = "plain", max_queue_delay_us: int = 500, force: bool = False,
                  copy_backend: bool = False, extra_parameters: dict[str, str] | None = None,
                  monitor_sample_rate: float = 0.0) -> str:
    """Writes <repo>/<name>/{config.pbtxt, 1/model.exitc[, 1/model.py]}; returns the model directory.
    `monitor_sample_rate` > 0: the agreement monitor (exitc.monitor in the Python backend,
    exitc::AgreementMonitor in the C++ one) checks that share of the early rows at full depth and
    reports live agreement as metrics."""
    manifest = read_manifest(artifact)  # the one reader: format, schema version, segment files checked
    if backend not in ("exitc", "python"):
        raise ExitcError(f"--backend {backend!r}: expected exitc or python")
    if mode not in ("plain", "continuous"):
        raise ExitcError(f"--mode {mode!r}: expected plain or continuous")
    if backend == "python" and mode != "plain":
        raise ExitcError("--mode continuous needs --backend exitc (the Python backend runs plain batches)")
    if max_batch_size < 1:
        raise ExitcError(f"--max-batch-size {max_batch_size}: must be at least 1")
    if instances < 1:
        raise ExitcError(f"--instances {instances}: must be at least 1")
    if not (0.0 <= monitor_sample_rate <= 1.0):
        raise ExitcError(f"--monitor-sample-rate {monitor_sample_rate}: must be in [0, 1]")
    name = name or os.path.splitext(os.path.basename(os.path.normpath(artifact)))[0]
    if not name or "/" in name or name.startswith("."):
        raise ExitcError(f"--name {name!r}: not a valid model name")
    params = dict(extra_parameters or {})
    if backend == "python":
        params.setdefault("exitc_sys_path", _default_sys_path())
    if monitor_sample_rate > 0:
        params["monitor_sample_rate"] = repr(float(monitor_sample_rate))
    text = config_pbtxt(manifest, name, max_batch_size, instances, backend, mode, max_queue_delay_us,
                        extra_parameters=params)
    model_dir = os.path.join(repo, name)
    if os.path.exists(model_dir):
        if not force:
            raise ExitcError(f"{model_dir} exists (use --force to replace it)")
        shutil.rmtree(model_dir)
    version_dir = os.path.join(model_dir, "1")
    os.makedirs(version_dir)
    shutil.copytree(artifact, os.path.join(version_dir, "model.exitc"))
    with open(os.path.join(model_dir, "config.pbtxt"), "w") as f:
        f.write(text)
    if backend == "python":
        with open(os.path.join(version_dir, "model.py"), "w") as f:
            f.write(PYTHON_MODEL)
    elif copy_backend:
        shutil.copy2(os.path.join(backend_dir(), "exitc", BACKEND_LIB), os.path.join(model_dir, BACKEND_LIB))
    return model_dir


def cmd_export_triton(a) -> int:
    model_dir = export_triton(a.artifact, a.repo, name=a.name, max_batch_size=a.max_batch_size, instances=a.instances,
                              backend=a.backend, mode=a.mode, max_queue_delay_us=a.max_queue_delay_us, force=a.force,
                              copy_backend=a.copy_backend, monitor_sample_rate=a.monitor_sample_rate)
    print(f"wrote {model_dir} (backend {a.backend}"
          + (f", mode {a.mode}" if a.backend == "exitc" else "") + f", max_batch_size {a.max_batch_size})")
    if a.backend == "exitc" and not a.copy_backend:
        print(f"serve: tritonserver --model-repository {a.repo} --backend-directory $(exitc backend-dir)")
    return 0


def cmd_backend_dir(a) -> int:
    print(backend_dir())
    return 0


def add_subcommands(sub) -> dict:
    """Adds export-triton and backend-dir to the CLI's subparsers; returns their handlers."""
    e = sub.add_parser("export-triton", help="write a Triton model-repository entry for a compiled model")
    e.add_argument("artifact", help="compiled model directory (model.exitc)")
    e.add_argument("--repo", required=True, help="Triton model repository directory")
    e.add_argument("--name", help="model name (default: the artifact's name without .exitc)")
    e.add_argument("--max-batch-size", type=int, default=64,
                   help="most rows one request (and one dynamic batch) may hold: config.pbtxt max_batch_size")
    e.add_argument("--instances", type=int, default=1, help="instances (execution lanes) on CPU")
    e.add_argument("--backend", default="exitc", help="exitc (C++ backend) or python (Python backend + exitc.load)")
    e.add_argument("--mode", default="plain", help="plain or continuous (depth-wise batching; exitc backend)")
    e.add_argument("--max-queue-delay-us", type=int, default=500, help="dynamic batching queue delay")
    e.add_argument("--copy-backend", action="store_true",
                   help="copy libtriton_exitc.so into the model directory (no --backend-directory needed)")
    e.add_argument("--force", action="store_true", help="replace an existing model directory")
    e.add_argument("--monitor-sample-rate", type=float, default=0.0,
                   help="share of early-exit rows also run at full depth to report live agreement with the "
                        "original as metrics (both backends; 0 = off)")
    sub.add_parser("backend-dir", help="print the Triton backend directory holding exitc/libtriton_exitc.so")
    return {"export-triton": cmd_export_triton, "backend-dir": cmd_backend_dir}
