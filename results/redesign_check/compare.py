"""Compares two directories of smoke runs: results.json without wall_time_s, and the final
model's exported arrays, bitwise."""
import json, subprocess, sys, os
import numpy as np
before, after = sys.argv[1], sys.argv[2]
ok = True
for m in (sys.argv[3].split(",") if len(sys.argv) > 3 else ["async", "plain", "ldam_drw", "balanced_softmax", "logit_adjustment", "crt", "lws", "tau_norm", "ncm"]):
    a = json.load(open(f"{before}/{m}/results.json")); b = json.load(open(f"{after}/{m}/results.json"))
    a.pop("wall_time_s"); b.pop("wall_time_s")
    same_results = a == b
    arrays = []
    for d in (before, after):
        out = f"{d}/{m}.npz"
        if not os.path.exists(out):
            subprocess.run([sys.executable, "-m", "asyncjax.export", f"--workdir={d}/{m}", f"--output={out}"],
                           check=True, capture_output=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        arrays.append(dict(np.load(out, allow_pickle=False)))
    x, y = arrays
    same_arrays = x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x if k != "config")
    same_config = json.loads(str(x["config"])) == json.loads(str(y["config"]))
    print(f"{m:18s} results {'same' if same_results else 'DIFFER'}  parameters {'bitwise same' if same_arrays else 'DIFFER'}"
          f"  config {'same' if same_config else 'DIFFER'}  overall {b['overall']:.2f}")
    ok &= same_results and same_arrays and same_config
print("ALL SAME" if ok else "DIFFERENCES")
