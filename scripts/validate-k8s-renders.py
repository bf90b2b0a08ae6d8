#!/usr/bin/env python3
"""Checks across several renders of the Helm chart (scripts/validate-deploy.sh runs it after the
per-file policy checks of scripts/validate-k8s.py): what only shows when values change, when a
second release shares the namespace, or when a platform's settings (pull secrets, tainted
pools) are given. Each check is named for the defect of issue 21 it catches.

    validate-k8s-renders.py HELM CHART NAMESPACE KUBE_VERSION [OUT_DIR]

With OUT_DIR, the renders that set the most values (every pod with pull secrets and scheduling;
the MinIO loaders with env and files from Secrets) are written there for kubernetes-validate.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import yaml

helm, chart, namespace, kube = sys.argv[1:5]
out_dir = sys.argv[5] if len(sys.argv) > 5 else None


def keep(name, docs):
    if out_dir:
        with open(f"{out_dir}/{name}.yaml", "w") as f:
            yaml.safe_dump_all(docs, f)
errors = []


def err(msg):
    errors.append(msg)


def render(*args, release="etl", ok=True):
    """The rendered documents, or (ok=False) the error text of a render that must fail."""
    cmd = [helm, "template", release, chart, "--namespace", namespace, "--kube-version", kube, *args]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if not ok:
        return None if p.returncode == 0 else p.stderr
    if p.returncode != 0:
        err(f"helm template {' '.join(args)} failed: {p.stderr.strip()}")
        return []
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def pods(docs):
    """(kind, name, pod labels, pod spec) of every pod: Deployments, Jobs, the test Pod."""
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            t = d["spec"]["template"]
            yield d["kind"], d["metadata"].get("name") or d["metadata"].get("generateName"), t["metadata"].get("labels") or {}, t["spec"]
        elif d["kind"] == "Pod":
            yield "Pod", d["metadata"]["name"], d["metadata"].get("labels") or {}, d["spec"]


def jobs(docs):
    """component -> Job, for the Jobs installed with the release (migrate, topics)."""
    return {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs
            if d["kind"] == "Job" and d["metadata"].get("name")}


def matches(selector, labels):
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        if e["operator"] == "In" and labels.get(e["key"]) not in e["values"]:
            return False
    return True


BASE = ["-f", f"{chart}/ci/prod-sasl-values.yaml"]

# --- Defect 2: a Job's name follows its whole pod template ---------------------------------------
# A Job's spec.template is immutable: a change under a kept name fails `helm upgrade` / an Argo CD
# sync with "field is immutable". So whenever the template changes, so must the name; and the same
# values keep the name (re-applying changes nothing).
base = jobs(render(*BASE))
variants = {
    "owner secret": ["--set", "database.ownerSecret=etl-db-owner-2"],
    "migrate wait": ["--set", "migrate.wait=5m"],
    "pull secrets": ["--set", "imagePullSecrets[0].name=regcred"],
    "pull policy": ["--set", "image.pullPolicy=Always"],
    "image": ["--set", "image.tag=0.2.0"],
    "scheduling": ["--set", "tolerations[0].key=pool", "--set", "tolerations[0].operator=Exists"],
    "migrate resources": ["--set", "migrate.resources.limits.memory=300Mi"],
    "partitions": ["--set", "topics.partitions=12"],
    "url key": ["--set", "database.urlKey=uri"],
    "log level (ConfigMap only)": ["--set", "log.level=debug"],
}
must_change = {"owner secret", "migrate wait", "pull secrets", "pull policy"}
for what, args in variants.items():
    other = jobs(render(*BASE, *args))
    for comp, job in base.items():
        if comp not in other:
            err(f"{what}: the {comp} Job is gone")
            continue
        same_template = job["spec"]["template"] == other[comp]["spec"]["template"]
        same_name = job["metadata"]["name"] == other[comp]["metadata"]["name"]
        if same_template != same_name:
            err(f"{what}: the {comp} Job's pod template {'is unchanged' if same_template else 'changed'} but its name "
                f"{'changed' if not same_name else 'did not'} ({job['metadata']['name']} -> {other[comp]['metadata']['name']})")
        if comp == "migrate" and what in must_change and same_template:
            err(f"{what}: expected to change the migrate Job's pod template")
again = jobs(render(*BASE))
if {c: j["metadata"]["name"] for c, j in base.items()} != {c: j["metadata"]["name"] for c, j in again.items()}:
    err("the same values must give the same Job names")
if set(base) != {"migrate", "topics"}:
    err(f"expected a migrate and a topics Job with {BASE}, got {sorted(base)}")

# --- Defect 3: two releases in one namespace share nothing ---------------------------------------
two = ["-f", f"{chart}/ci/prod-values.yaml", "--set", "topics.create=true"]
a, b = render(*two, release="etl-a"), render(*two, release="etl-b")
names_a = {(d["kind"], d["metadata"].get("name")) for d in a if d["metadata"].get("name")}
names_b = {(d["kind"], d["metadata"].get("name")) for d in b if d["metadata"].get("name")}
for clash in sorted(names_a & names_b):
    err(f"two releases: both create {clash[0]} {clash[1]}")


def groups(docs):
    return {v for d in docs if d["kind"] == "ConfigMap" for k, v in (d.get("data") or {}).items() if k == "KAFKA_GROUP_ID"}


ga, gb = groups(a), groups(b)
if not ga or not gb or ga & gb:
    err(f"two releases: consumer groups {sorted(ga)} and {sorted(gb)} must exist and differ")
for mine, theirs, rel in ((a, b, "etl-a"), (b, a, "etl-b")):
    their_pods = [(k, n, l) for k, n, l, _ in pods(theirs)]
    for d in mine:
        sel = None
        if d["kind"] == "NetworkPolicy":
            sel = d["spec"]["podSelector"]
        elif d["kind"] in ("Service",):
            sel = {"matchLabels": d["spec"]["selector"]}
        elif d["kind"] in ("PodDisruptionBudget", "Deployment"):
            sel = d["spec"]["selector"]
        if sel is None:
            continue
        for k, n, l in their_pods:
            if matches(sel, l):
                err(f"two releases: {rel}'s {d['kind']} {d['metadata']['name']} selects the other release's {k} {n}")
    for d in mine:
        if d["kind"] == "ServiceMonitor":
            their_svcs = [s for s in theirs if s["kind"] == "Service"]
            for s in their_svcs:
                if matches(d["spec"]["selector"], s["metadata"].get("labels") or {}):
                    err(f"two releases: {rel}'s ServiceMonitor scrapes the other release's Service {s['metadata']['name']}")
        if d["kind"] == "PrometheusRule":
            text = json.dumps(d["spec"])
            other = "etl-b" if rel == "etl-a" else "etl-a"
            if f'release=\\"{rel}\\"' not in text or f'release=\\"{other}\\"' in text:
                err(f"two releases: {rel}'s PrometheusRule must select release={rel} only")
        if d["kind"] == "Deployment" and d["metadata"]["labels"].get("app.kubernetes.io/name") == "lag-exporter":
            args = " ".join(d["spec"]["template"]["spec"]["containers"][0]["args"])
            if f"--group.filter=^{rel}-loader$" not in args:
                err(f"two releases: {rel}'s lag exporter must follow its own group ({rel}-loader): {args}")
# Rule group names carry the release: the two releases' rules stay apart on Prometheus' rules page
# and in the rule-group metrics (prometheus_rule_group_*), and a Thanos/Mimir ruler that keys
# groups by namespace and name does not merge them.
ga_ = {g["name"] for d in a if d["kind"] == "PrometheusRule" for g in d["spec"]["groups"]}
gb_ = {g["name"] for d in b if d["kind"] == "PrometheusRule" for g in d["spec"]["groups"]}
if not ga_ or ga_ & gb_:
    err(f"two releases: rule group names collide: {sorted(ga_ & gb_)}")

# --- Defect 7: pull secrets and scheduling on every pod ------------------------------------------
everything = ["-f", f"{chart}/ci/prod-sasl-values.yaml", "--set", "topics.create=true", "--set", "lagExporter.enabled=true",
              "--set", "replay.args={--to,2h}", "--set", "backfill.args={--from,2h,--to,1h}",
              "--set", "imagePullSecrets[0].name=regcred", "--set", "nodeSelector.pool=etl",
              "--set", "tolerations[0].key=dedicated", "--set", "tolerations[0].operator=Exists",
              "--set", "priorityClassName=etl-high",
              "--set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=pool",
              "--set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
              "--set", "podAnnotations.team=data", "--set", "podLabels.cost=etl", "--set", "commonLabels.owner=platform"]
docs = render(*everything)
keep("all-pods", docs)
seen = set()
for kind, name, labels, spec in pods(docs):
    seen.add(labels.get("app.kubernetes.io/component"))
    who = f"{kind} {name}"
    if [s.get("name") for s in spec.get("imagePullSecrets") or []] != ["regcred"]:
        err(f"{who}: imagePullSecrets missing (imagePullSecrets=[regcred])")
    if spec.get("nodeSelector") != {"pool": "etl"}:
        err(f"{who}: nodeSelector missing")
    if not any(t.get("key") == "dedicated" for t in spec.get("tolerations") or []):
        err(f"{who}: tolerations missing")
    if "nodeAffinity" not in (spec.get("affinity") or {}):
        err(f"{who}: affinity missing")
    if spec.get("priorityClassName") != "etl-high":
        err(f"{who}: priorityClassName missing")
    if labels.get("cost") != "etl" or labels.get("owner") != "platform":
        err(f"{who}: podLabels / commonLabels missing")
for want in ("run", "extractor", "migrate", "topics", "lag-exporter", "replay", "backfill", "test"):
    if want not in seen:
        err(f"the all-pods render has no {want} pod")
# A component's own setting wins over the global one.
docs = render(*BASE, "--set", "tolerations[0].key=global", "--set", "tolerations[0].operator=Exists",
              "--set", "migrate.tolerations[0].key=migrate-only", "--set", "migrate.tolerations[0].operator=Exists")
mig = jobs(docs).get("migrate")
if not mig or [t["key"] for t in mig["spec"]["template"]["spec"].get("tolerations", [])] != ["migrate-only"]:
    err("migrate.tolerations must replace the global tolerations for the migrate Job")

# --- Defect 6: env and files from Secrets, the store's port, extra egress ------------------------
docs = render("-f", f"{chart}/ci/prod-values.yaml",
              "--set", "loader.extraEnv[0].name=AWS_ACCESS_KEY_ID",
              "--set", "loader.extraEnv[0].valueFrom.secretKeyRef.name=minio",
              "--set", "loader.extraEnv[0].valueFrom.secretKeyRef.key=user",
              "--set", "extraEnvFrom[0].secretRef.name=etl-extra",
              "--set", "loader.extraVolumes[0].name=pg-ca", "--set", "loader.extraVolumes[0].secret.secretName=pg-ca",
              "--set", "loader.extraVolumeMounts[0].name=pg-ca", "--set", "loader.extraVolumeMounts[0].mountPath=/run/secrets/pg-ca",
              "--set", "loader.storePorts={443,9000}",
              "--set", "networkPolicy.extraLoaderEgress[0].ports[0].port=8200",
              "--set", "parquet.env.AWS_ENDPOINT_URL=http://minio.minio.svc:9000")
keep("minio", docs)
for kind, name, labels, spec in pods(docs):
    if labels.get("app.kubernetes.io/component") not in ("run", "migrate"):
        continue
    for c in spec["containers"] + spec.get("initContainers", []):
        if labels["app.kubernetes.io/component"] == "run" and not any(e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "minio" for e in c.get("env", [])):
            err(f"{kind} {name}/{c['name']}: loader.extraEnv (secretKeyRef) missing")
        if not any(ef.get("secretRef", {}).get("name") == "etl-extra" for ef in c.get("envFrom", [])):
            err(f"{kind} {name}/{c['name']}: extraEnvFrom (secretRef) missing")
        if not any(m["name"] == "pg-ca" for m in c.get("volumeMounts", [])):
            err(f"{kind} {name}/{c['name']}: loader.extraVolumeMounts missing")
    if not any(v["name"] == "pg-ca" for v in spec.get("volumes", [])):
        err(f"{kind} {name}: loader.extraVolumes missing")
for d in docs:
    if d["kind"] == "ConfigMap" and any("secretKeyRef" in str(v) for v in (d.get("data") or {}).values()):
        err(f"ConfigMap {d['metadata']['name']}: a Secret reference ended up in a ConfigMap")
lp = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-loader")]
ports = {pt.get("port") for d in lp for e in d["spec"].get("egress", []) for pt in e.get("ports", [])}
if not {443, 9000, 8200} <= ports:
    err(f"loader NetworkPolicy: egress must open loader.storePorts (443, 9000) and extraLoaderEgress (8200), opens {sorted(ports)}")
p = subprocess.run([sys.executable, "scripts/validate-k8s.py", "/dev/stdin", namespace, "minio"],
                   input=yaml.safe_dump_all(docs), capture_output=True, text=True)
if p.returncode:
    err("the MinIO render fails the policy checks:\n" + p.stderr)

# --- Existing ServiceAccounts (serviceAccount.create: false) ---------------------------------------
docs = render("-f", f"{chart}/ci/prod-values.yaml", "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=shared",
              "--set", "loader.serviceAccount.create=false", "--set", "loader.serviceAccount.name=etl-loader-irsa")
if any(d["kind"] == "ServiceAccount" for d in docs):
    err("serviceAccount.create=false and loader.serviceAccount.create=false: no ServiceAccount is created")
for kind, name, labels, spec in pods(docs):
    want = "etl-loader-irsa" if labels.get("app.kubernetes.io/component") in ("run", "backfill") else "shared"
    if spec.get("serviceAccountName") != want:
        err(f"{kind} {name}: serviceAccountName {spec.get('serviceAccountName')!r}, want {want!r}")

# --- tests.enabled: false leaves the test pod and what admits it out --------------------------------
docs = render("-f", f"{chart}/ci/prod-values.yaml", "--set", "tests.enabled=false")
if any(d["kind"] == "Pod" for d in docs) or '"test"' in json.dumps([d for d in docs if d["kind"] == "NetworkPolicy"]):
    err("tests.enabled=false: no test Pod, and no network policy mentions it")

# --- Defect 9: the metadata service only when asked; TriggerAuthentication never empty -----------
docs = render("-f", f"{chart}/ci/prod-values.yaml", "--set", "networkPolicy.cloudMetadata=true")
if "169.254.169.254/32" not in json.dumps(docs):
    err("networkPolicy.cloudMetadata=true must open the instance metadata service")
docs = render("-f", f"{chart}/ci/prod-values.yaml", "--set", "kafka.securityProtocol=ssl")
if any(d["kind"] == "TriggerAuthentication" for d in docs):
    err("TLS with neither SASL nor a CA: no TriggerAuthentication (its spec would be empty)")
so = [d for d in docs if d["kind"] == "ScaledObject"]
if not so or so[0]["spec"]["triggers"][0]["metadata"].get("tls") != "enable" or "authenticationRef" in so[0]["spec"]["triggers"][0]:
    err("TLS alone: the ScaledObject's trigger says tls: enable and has no authenticationRef")

# --- Guards: what must refuse to render -----------------------------------------------------------
refusals = {
    "a typo (loader.replica) against values.schema.json": (["--set", "parquet.url=s3://b/p", "--set", "loader.replica=3"], "replica"),
    "no bucket and no volume (parquet.url is required)": ([], "parquet.url"),
    "autoscaling.maxReplicas above topics.partitions": (["-f", f"{chart}/ci/prod-values.yaml", "--set", "autoscaling.maxReplicas=12"], "topics.partitions"),
    "an unknown SASL mechanism": (["-f", f"{chart}/ci/prod-sasl-values.yaml", "--set", "kafka.sasl.mechanism=SHA512"], "mechanism"),
}
for what, (args, needle) in refusals.items():
    out = render(*args, ok=False)
    if out is None:
        err(f"must refuse to render: {what}")
    elif needle not in out:
        err(f"{what}: refused, but not for the reason expected ({needle!r}): {out.strip()}")

# --- Alert thresholds follow the intervals; rules can be turned off ------------------------------
def rules(docs):
    return {r["alert"]: r for d in docs if d["kind"] == "PrometheusRule" for g in d["spec"]["groups"] for r in g["rules"] if "alert" in r}


r = rules(render("-f", f"{chart}/ci/prod-values.yaml"))
if not r.get("EtlExtractorNoPublish", {}).get("expr", "").rstrip().endswith("> 900"):
    err("EtlExtractorNoPublish: 900 s by default (EXTRACT_INTERVAL 30s)")
r = rules(render("-f", f"{chart}/ci/prod-values.yaml", "--set", "extractor.env.EXTRACT_INTERVAL=20m",
                 "--set", "parquet.rollInterval=1h", "--set", "monitoring.prometheusRule.disabled={EtlLoaderDataDirAlmostFull}",
                 "--set", "monitoring.prometheusRule.additionalLabels.team=data"))
if not r.get("EtlExtractorNoPublish", {}).get("expr", "").rstrip().endswith("> 3600"):
    err(f"EtlExtractorNoPublish: EXTRACT_INTERVAL=20m must raise the threshold to 3600 s: {r.get('EtlExtractorNoPublish', {}).get('expr')}")
if "[3600s]" not in r.get("EtlNothingLoaded", {}).get("expr", ""):
    err("EtlNothingLoaded: EXTRACT_INTERVAL=20m must widen its window to 3600 s")
if not r.get("EtlLoaderParquetRollsStalled", {}).get("expr", "").rstrip().endswith("> 10800"):
    err("EtlLoaderParquetRollsStalled: PARQUET_ROLL_INTERVAL=1h must raise the threshold to 10800 s")
if "EtlLoaderDataDirAlmostFull" in r:
    err("monitoring.prometheusRule.disabled must leave the alert out")
if any(x.get("labels", {}).get("team") != "data" or "severity" not in x.get("labels", {}) for x in r.values()):
    err("monitoring.prometheusRule.additionalLabels must reach every alert, beside its severity")

# --- NOTES.txt renders (helm template skips it): through a copy that has it as a file ----------
def render_notes(*args):
    global chart
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "chart")
        shutil.copytree(chart, copy)
        shutil.move(os.path.join(copy, "templates", "NOTES.txt"), os.path.join(copy, "files", "NOTES.txt"))
        with open(os.path.join(copy, "templates", "notes.yaml"), "w") as f:
            f.write('notes: {{ tpl (.Files.Get "files/NOTES.txt") . | toJson }}\n')
        saved, chart = chart, copy
        try:
            return [d["notes"] for d in render(*args, "--show-only", "templates/notes.yaml")]
        finally:
            chart = saved


if not os.path.exists(os.path.join(chart, "templates", "NOTES.txt")):
    err("templates/NOTES.txt is missing")
else:
    for args in (["-f", f"{chart}/ci/prod-sasl-values.yaml"], ["-f", f"{chart}/ci/dev-values.yaml"]):
        notes = render_notes(*args)
        if not notes or "helm test etl" not in notes[0] or "etl-loader" not in notes[0] or "rollback" not in notes[0]:
            err(f"NOTES.txt {args}: must name the group, `helm test` and rollback: {notes}")

for e in errors:
    print(f"  - {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
