#!/usr/bin/env python3
"""Render the Kubernetes manifests with kustomize and check every reference.

No cluster runs in CI, so this is what keeps deploy/k8s and deploy/k8s-embed
honest: each kustomization is rendered by kustomize (the one built into
kubectl) from a copy of deploy/ with a secrets env file made by the real
deploy/k8s/make-secrets.sh, and in the rendered set every config map, secret,
volume, claim, service and port that a manifest names must exist:

- pod templates: volumes' config maps and secrets, volume mounts' volumes (or
  claim templates), envFrom/env references, named probe ports, and every
  `--config PATH` in a container's command naming a key of a mounted config map;
- StatefulSets: their governing Service;
- Services, PodDisruptionBudgets and NetworkPolicies: a selector that selects
  some pod template, and ports those pods' containers open.

References marked `optional: true` are external by design (the S3 credentials
secret a user makes) and are listed, not failed.

    .venv/bin/python scripts/check_k8s_manifests.py [--deploy DIR]

Prints `k8s kustomization=... objects=... references=...` per kustomization
and exits 1 listing every dangling reference.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

KUSTOMIZATIONS = ["k8s", "k8s-embed"]
WORKLOADS = {"StatefulSet", "Deployment", "DaemonSet", "Job", "ReplicaSet"}


def render(deploy: str, name: str) -> list:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        sys.exit("check_k8s_manifests: kubectl (with its built-in kustomize) is not on PATH")
    done = subprocess.run(
        [kubectl, "kustomize", os.path.join(deploy, name)], capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"check_k8s_manifests: kustomize could not render {name}:\n{done.stderr}")
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def pod_template(obj: dict):
    if obj["kind"] not in WORKLOADS:
        return None
    return obj["spec"]["template"]


def selects(selector: dict, labels: dict) -> bool:
    wanted = selector.get("matchLabels", selector) if selector else {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


class Checker:
    def __init__(self, objects: list):
        self.objects = objects
        self.problems: list = []
        self.optional: list = []
        self.references = 0
        self.names = {(o["kind"], o["metadata"]["name"]) for o in objects}
        self.config_maps = {
            o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"
        }
        self.templates = [
            (o, pod_template(o)) for o in objects if pod_template(o) is not None
        ]

    def need(self, kind: str, name: str, where: str, optional: bool = False) -> None:
        self.references += 1
        if (kind, name) in self.names:
            return
        if optional:
            self.optional.append(f"{where}: optional {kind} {name} (made outside Engram)")
        else:
            self.problems.append(f"{where}: {kind} {name} does not exist in the rendered set")

    def check_pods(self) -> None:
        for owner, template in self.templates:
            where = f"{owner['kind']}/{owner['metadata']['name']}"
            spec = template["spec"]
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            claims = {
                c["metadata"]["name"] for c in owner["spec"].get("volumeClaimTemplates", [])
            }
            for volume in volumes.values():
                if "configMap" in volume:
                    cm = volume["configMap"]
                    self.need("ConfigMap", cm["name"], where, cm.get("optional", False))
                if "secret" in volume:
                    s = volume["secret"]
                    self.need("Secret", s["secretName"], where, s.get("optional", False))
                if "persistentVolumeClaim" in volume:
                    self.need(
                        "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"], where
                    )
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                cwhere = f"{where} container {container['name']}"
                mounts = {}
                for mount in container.get("volumeMounts", []):
                    self.references += 1
                    if mount["name"] not in volumes and mount["name"] not in claims:
                        self.problems.append(f"{cwhere}: mounts volume {mount['name']} it does not declare")
                    mounts[mount["mountPath"].rstrip("/")] = volumes.get(mount["name"])
                for source in container.get("envFrom", []):
                    for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                        if key in source:
                            ref = source[key]
                            self.need(kind, ref["name"], cwhere, ref.get("optional", False))
                for env in container.get("env", []):
                    value_from = env.get("valueFrom", {})
                    for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                        if key in value_from:
                            ref = value_from[key]
                            self.need(kind, ref["name"], cwhere, ref.get("optional", False))
                port_names = {p["name"] for p in container.get("ports", []) if "name" in p}
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    port = container.get(probe, {}).get("httpGet", {}).get("port")
                    if isinstance(port, str):
                        self.references += 1
                        if port not in port_names:
                            self.problems.append(f"{cwhere}: {probe} names port {port} it does not open")
                command = " ".join(container.get("command", []) + container.get("args", []))
                for path in re.findall(r"--config\s+(\S+)", command):
                    self.check_config_path(cwhere, path, mounts)

    def check_config_path(self, where: str, path: str, mounts: dict) -> None:
        self.references += 1
        directory, _, file = path.rpartition("/")
        volume = mounts.get(directory)
        if volume is None:
            self.problems.append(f"{where}: --config {path} is under no mounted volume")
            return
        cm = volume.get("configMap")
        if cm is None:
            return
        if file not in self.config_maps.get(cm["name"], {}):
            self.problems.append(f"{where}: --config {path}: config map {cm['name']} has no key {file}")

    def pods_selected(self, selector: dict) -> list:
        return [t for _, t in self.templates if selects(selector, t["metadata"].get("labels", {}))]

    def container_ports(self, pods: list) -> tuple:
        numbers, names = set(), set()
        for pod in pods:
            for container in pod["spec"].get("containers", []):
                for port in container.get("ports", []):
                    numbers.add(port["containerPort"])
                    if "name" in port:
                        names.add(port["name"])
        return numbers, names

    def check_services(self) -> None:
        for obj in self.objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            where = f"{kind}/{name}"
            if kind == "StatefulSet":
                self.need("Service", obj["spec"]["serviceName"], where)
            if kind == "Service":
                pods = self.pods_selected(obj["spec"].get("selector", {}))
                self.references += 1
                if not pods:
                    self.problems.append(f"{where}: its selector selects no pod template")
                    continue
                numbers, names = self.container_ports(pods)
                for port in obj["spec"].get("ports", []):
                    target = port.get("targetPort", port["port"])
                    self.references += 1
                    if target not in numbers and target not in names:
                        self.problems.append(f"{where}: port {target} is opened by none of its pods")
            if kind == "PodDisruptionBudget":
                self.references += 1
                if not self.pods_selected(obj["spec"]["selector"]):
                    self.problems.append(f"{where}: its selector selects no pod template")
            if kind == "NetworkPolicy":
                pods = self.pods_selected(obj["spec"]["podSelector"])
                self.references += 1
                if not pods:
                    self.problems.append(f"{where}: its podSelector selects no pod template")
                    continue
                numbers, names = self.container_ports(pods)
                for rule in obj["spec"].get("ingress", []):
                    for port in rule.get("ports", []):
                        self.references += 1
                        if port["port"] not in numbers and port["port"] not in names:
                            self.problems.append(f"{where}: port {port['port']} is opened by none of its pods")


def main() -> None:
    parser = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--deploy", default=os.path.join(here, "..", "deploy"))
    args = parser.parse_args()
    failed = False
    with tempfile.TemporaryDirectory(prefix="engram-k8s-") as work:
        for name in KUSTOMIZATIONS:
            shutil.copytree(os.path.join(args.deploy, name), os.path.join(work, name))
        secrets = os.path.join(work, "k8s", "secrets")
        shutil.rmtree(secrets, ignore_errors=True)
        subprocess.run(
            ["bash", os.path.join(work, "k8s", "make-secrets.sh"), "--api-keys", secrets],
            check=True,
            capture_output=True,
        )
        for name in KUSTOMIZATIONS:
            checker = Checker(render(work, name))
            checker.check_pods()
            checker.check_services()
            for line in checker.optional:
                print(f"  {name}: {line}")
            for line in checker.problems:
                print(f"  {name}: DANGLING {line}")
            failed |= bool(checker.problems)
            print(
                f"k8s kustomization={name} objects={len(checker.objects)} "
                f"references={checker.references} dangling={len(checker.problems)}"
            )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
