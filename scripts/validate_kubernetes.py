#!/usr/bin/env python3
"""Validates Deploy/kubernetes against the Kubernetes schemas (run by Tests/DeployTests).

For each overlay in Deploy/kubernetes/overlays/ (one per ServerConfig/ file of the same name):
  1. renders it with `kubectl kustomize` when kubectl is installed, else with the small renderer
     below (resources, configMapGenerator, strategic-merge patches by kind and name: the subset the
     overlays use; generated ConfigMaps get no hash suffix there);
  2. validates every rendered object with `kubernetes-validate --strict` (unknown fields fail);
  3. checks the overlay's server.toml equals ServerConfig/<overlay>.toml and that the container's
     memory limit and request are memory_budget + 512Mi, the probes hit /health, and the HPA,
     PDB and Services target the StatefulSet's pods.
The ServiceMonitor (a CRD, no schema in kubernetes-validate) and the prometheus-adapter rules are
checked for shape only. Run with the python of scripts/deploy-venv.sh (it needs PyYAML and
kubernetes-validate). Prints one line per check; exits 1 on any failure.
"""

import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUBE = os.path.join(ROOT, "Deploy", "kubernetes")
MARGIN_MIB = 512
failures = []


def check(condition, message):
    print(("ok    " if condition else "FAIL  ") + message)
    if not condition:
        failures.append(message)


def merge(base, patch):
    """Strategic merge as the overlays need it: maps merge, lists of named maps merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x for x in base + patch):
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            match = next((i for i, x in enumerate(out) if x["name"] == item["name"]), None)
            if match is None:
                out.append(copy.deepcopy(item))
            else:
                out[match] = merge(out[match], item)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "metadata" in x for x in base + patch):
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            match = next((i for i, x in enumerate(out) if x["metadata"].get("name") == item["metadata"].get("name")), None)
            if match is None:
                out.append(copy.deepcopy(item))
            else:
                out[match] = merge(out[match], item)
        return out
    return copy.deepcopy(patch)


def render_fallback(directory):
    """kustomize's subset used here: resources, configMapGenerator (files), patches (path)."""
    kustomization = yaml.safe_load(open(os.path.join(directory, "kustomization.yaml")))
    objects = []
    for resource in kustomization.get("resources", []):
        path = os.path.normpath(os.path.join(directory, resource))
        if os.path.isdir(path):
            objects += render_fallback(path)
        else:
            objects += [d for d in yaml.safe_load_all(open(path)) if d]
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for spec in generator.get("files", []):
            key, _, file = spec.partition("=") if "=" in spec else (os.path.basename(spec), "", spec)
            data[key] = open(os.path.join(directory, file)).read()
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    for patch in kustomization.get("patches", []):
        for doc in yaml.safe_load_all(open(os.path.join(directory, patch["path"]))):
            for i, obj in enumerate(objects):
                if obj["kind"] == doc["kind"] and obj["metadata"]["name"] == doc["metadata"]["name"]:
                    objects[i] = merge(obj, doc)
    labels = {}
    for entry in kustomization.get("labels", []):
        labels.update(entry.get("pairs", {}))
    for obj in objects:
        obj.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
    return objects


def render(directory):
    kubectl = shutil.which("kubectl")
    if kubectl:
        result = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True)
        if result.returncode == 0:
            return [d for d in yaml.safe_load_all(result.stdout) if d], "kubectl kustomize"
        print(f"note  kubectl kustomize failed ({result.stderr.strip()[:200]}); using the fallback renderer")
    return render_fallback(directory), "fallback renderer"


def mebibytes(quantity):
    m = re.fullmatch(r"(\d+)(Mi|Gi)", str(quantity))
    return int(m.group(1)) * (1024 if m.group(2) == "Gi" else 1) if m else None


def budget_mib(toml_text):
    m = re.search(r'^memory_budget\s*=\s*"(\d+)(MiB|GiB)"', toml_text, re.M)
    return int(m.group(1)) * (1024 if m.group(2) == "GiB" else 1) if m else None


def main():
    validator = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
    overlays = sorted(os.listdir(os.path.join(KUBE, "overlays")))
    check(len(overlays) >= 2, f"overlays: {overlays}")
    for name in overlays:
        directory = os.path.join(KUBE, "overlays", name)
        config_path = os.path.join(ROOT, "ServerConfig", f"{name}.toml")
        check(os.path.exists(config_path), f"{name}: ServerConfig/{name}.toml exists")
        if not os.path.exists(config_path):
            continue
        config = open(config_path).read()
        check(open(os.path.join(directory, "server.toml")).read() == config, f"{name}: server.toml is ServerConfig/{name}.toml")
        objects, how = render(directory)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump_all(objects, f)
            rendered = f.name
        result = subprocess.run([validator, "--strict", "--quiet", rendered], capture_output=True, text=True)
        kinds = sorted(o["kind"] for o in objects)
        check(result.returncode == 0, f"{name}: {len(objects)} objects rendered by {how} valid against the "
                                      f"Kubernetes schemas (--strict): {kinds} {result.stdout.strip()} {result.stderr.strip()}")
        os.unlink(rendered)
        by_kind = {o["kind"]: o for o in objects}
        for kind in ("StatefulSet", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"):
            check(kind in by_kind, f"{name}: has a {kind}")
        sts = by_kind.get("StatefulSet")
        if not sts:
            continue
        container = sts["spec"]["template"]["spec"]["containers"][0]
        budget = budget_mib(config)
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        check(budget is not None and mebibytes(limits["memory"]) == budget + MARGIN_MIB,
              f"{name}: limits.memory {limits['memory']} = memory_budget {budget} MiB + {MARGIN_MIB}Mi")
        check(requests["memory"] == limits["memory"], f"{name}: requests.memory = limits.memory (Guaranteed QoS)")
        check(container["readinessProbe"]["httpGet"]["path"] == "/health", f"{name}: readinessProbe on /health")
        check(container["startupProbe"]["httpGet"]["path"] == "/health", f"{name}: startupProbe on /health")
        check("livenessProbe" in container, f"{name}: livenessProbe")
        claim = sts["spec"]["volumeClaimTemplates"][0]
        check(claim["spec"]["storageClassName"] == "local-nvme", f"{name}: the store is on a local-nvme volume")
        check(any(m["mountPath"] == "/store" and m.get("readOnly") for m in container["volumeMounts"]),
              f"{name}: the server mounts the store read-only")
        generated = by_kind["ConfigMap"]["metadata"]["name"]
        check(any(v.get("configMap", {}).get("name") == generated for v in sts["spec"]["template"]["spec"]["volumes"]),
              f"{name}: the pod mounts the generated ConfigMap {generated}")
        pod_labels = sts["spec"]["template"]["metadata"]["labels"]
        for kind in ("Service", "PodDisruptionBudget"):
            selector = by_kind[kind]["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            check(all(pod_labels.get(k) == v for k, v in selector.items()), f"{name}: the {kind} selects the pods")
        hpa = by_kind["HorizontalPodAutoscaler"]["spec"]
        check(hpa["scaleTargetRef"]["name"] == sts["metadata"]["name"], f"{name}: the HPA scales the StatefulSet")
        check(hpa["metrics"][0]["pods"]["metric"]["name"] == "moe_queue_depth", f"{name}: the HPA reads moe_queue_depth")
        annotations = sts["spec"]["template"]["metadata"].get("annotations", {})
        check(annotations.get("prometheus.io/scrape") == "true", f"{name}: pods carry Prometheus scrape annotations")

    monitor = yaml.safe_load(open(os.path.join(KUBE, "prometheus", "servicemonitor.yaml")))
    check(monitor["kind"] == "ServiceMonitor" and monitor["spec"]["endpoints"][0]["path"] == "/metrics",
          "ServiceMonitor scrapes /metrics (shape only: a CRD)")
    rules = yaml.safe_load(open(os.path.join(KUBE, "prometheus", "adapter-rules.yaml")))["rules"]
    check(any(r["name"]["as"] == "moe_queue_depth" and "<<.Series>>" in r["metricsQuery"] for r in rules),
          "prometheus-adapter rule serves moe_queue_depth (shape only)")
    if failures:
        print(f"FAILED: {len(failures)} check(s)")
        return 1
    print("all Kubernetes checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
