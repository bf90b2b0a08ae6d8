#!/usr/bin/env python3
"""Policy checks on one rendered install of the Helm chart (scripts/validate-deploy.sh runs it
on every ci/*-values.yaml): what a platform team would read for before a rollout, each check
named for the defect it catches.

    validate-k8s.py RENDERED.yaml NAMESPACE LABEL
"""
import re
import sys

import yaml

class StrictLoader(yaml.SafeLoader):
    """Refuses a mapping with a key twice: the API server's strict field validation (kubectl's
    default) refuses such an object, where a lenient parser would keep the last value."""


def _mapping(loader, node, deep=False):
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {sorted(dup)}", node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, lambda l, n: _mapping(l, n, True))

rendered, namespace, where = sys.argv[1:4]
try:
    docs = [d for d in yaml.load_all(open(rendered), Loader=StrictLoader) if d]
except yaml.YAMLError as e:
    print(f"  - {where}: {e}", file=sys.stderr)
    sys.exit(1)
errors = []
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "StorageClass"}


def err(msg):
    errors.append(msg)


def by_kind(kind):
    return [d for d in docs if d["kind"] == kind]


def name_of(d):
    return d["metadata"].get("name") or d["metadata"].get("generateName")


def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(text))
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)] if m else None


def matches(selector, labels):
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        if e["operator"] == "In" and labels.get(e["key"]) not in e["values"]:
            return False
    return True


configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in by_kind("ConfigMap")}
POD_KINDS = ("Deployment", "Job", "Pod")


def all_pods():
    """Every pod the install can run: (object, pod labels, pod spec), Jobs and test Pods too."""
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            yield d, d["spec"]["template"]["metadata"].get("labels") or {}, d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield d, d["metadata"].get("labels") or {}, d["spec"]
deployments = {d["metadata"]["name"]: d for d in by_kind("Deployment")}
services = by_kind("Service")


def app(name):
    """The Deployment of app.kubernetes.io/name=name."""
    found = [d for d in deployments.values() if d["metadata"]["labels"].get("app.kubernetes.io/name") == name]
    return found[0] if found else None


def effective_env(container):
    env = {}
    for ef in container.get("envFrom", []):
        if "configMapRef" not in ef:
            continue  # a Secret's variables (extraEnvFrom): not ours to read
        ref = ef["configMapRef"].get("name")
        if ref not in configmaps:
            err(f"container {container['name']}: envFrom ConfigMap {ref} is not part of the install")
        env.update(configmaps.get(ref, {}))
    for e in container.get("env", []):
        env[e["name"]] = e.get("value")
    return env


# Documented variables only (README, "Configuration").
readme = open("README.md").read()
readme_vars = set(re.findall(r"^\|\s*`([A-Z_]+)`", readme, re.M)) | set(re.findall(r"/\s*`([A-Z_]+)`\s*\|", readme))
environments = {ef["configMapRef"]["name"] for _, _, spec in all_pods()
                for c in spec.get("initContainers", []) + spec["containers"]
                for ef in c.get("envFrom", []) if "configMapRef" in ef}
for name, data in configmaps.items():
    if name not in environments:
        continue
    for var in data:
        if var not in readme_vars:
            err(f"ConfigMap {name}: {var} is not a documented variable (README Configuration)")

# 1. Every namespaced object lands in the release's namespace: `helm template | kubectl apply`
#    must not scatter the KEDA ScaledObject or the ServiceMonitor into kubectl's current one.
for d in docs:
    if d["kind"] not in CLUSTER_SCOPED and d["metadata"].get("namespace") != namespace:
        err(f"{d['kind']} {name_of(d)}: metadata.namespace is {d['metadata'].get('namespace')!r}, not {namespace!r}")

# Pods (Deployments, Jobs, the test Pod): the restricted Pod Security Standard, resources
# everywhere; fsGroupChangePolicy OnRootMismatch (a large volume is not walked at every start).
for d, _, spec in all_pods():
    psc = spec.get("securityContext", {})
    if not (psc.get("runAsNonRoot") and psc.get("runAsUser") == 10001 and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
        err(f"{d['kind']} {name_of(d)}: pod securityContext must set runAsNonRoot, runAsUser 10001, seccomp RuntimeDefault")
    if psc.get("fsGroupChangePolicy") != "OnRootMismatch":
        err(f"{d['kind']} {name_of(d)}: pod securityContext.fsGroupChangePolicy must be OnRootMismatch")
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext", {})
        if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False and sc.get("capabilities", {}).get("drop") == ["ALL"]):
            err(f"{d['kind']} {name_of(d)}/{c['name']}: container securityContext incomplete")
        if not c.get("resources", {}).get("requests") or not c.get("resources", {}).get("limits"):
            err(f"{d['kind']} {name_of(d)}/{c['name']}: resources requests and limits required")
        effective_env(c)

extractor, loader = app("extractor"), app("loader")
if not extractor or not loader:
    err("the install needs an extractor and a loader Deployment")
    extractor = extractor or {"spec": {"template": {"spec": {"containers": [{}]}}}, "metadata": {"labels": {}}}
    loader = loader or extractor

# Exactly one extractor.
if extractor["spec"].get("replicas") != 1 or extractor["spec"].get("strategy", {}).get("type") != "Recreate":
    err("extractor: replicas 1 with strategy Recreate (exactly one active instance)")

# 11. The kubelet's SIGKILL must not cut the drains short: the extractor's grace bounds its
#     in-flight fetch and the acknowledgements together, the loader's its last batch.
for dep, var, default in ((extractor, "EXTRACT_SHUTDOWN_GRACE", "10s"), (loader, "LOADER_SHUTDOWN_GRACE", "30s")):
    c = dep["spec"]["template"]["spec"]["containers"][0]
    drain = seconds(effective_env(c).get(var, default)) if c else None
    kill = dep["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    if drain is None or kill <= drain + 5:
        err(f"{name_of(dep)}: terminationGracePeriodSeconds ({kill}) must exceed {var} by more than 5 s")

# 7. Liveness and readiness are different endpoints: /health (the loop turns), /ready (deps);
#    a startup probe holds liveness off until the first /health.
for dep in (extractor, loader):
    c = dep["spec"]["template"]["spec"]["containers"][0]
    if (c.get("livenessProbe") or {}).get("httpGet", {}).get("path") != "/health" or \
       (c.get("readinessProbe") or {}).get("httpGet", {}).get("path") != "/ready":
        err(f"{name_of(dep)}: livenessProbe /health and readinessProbe /ready")
    if (c.get("startupProbe") or {}).get("httpGet", {}).get("path") != "/health":
        err(f"{name_of(dep)}: startupProbe /health")

# 8. A settings change restarts the pods: their template carries a digest of the ConfigMaps.
for dep in (extractor, loader):
    if "checksum/config" not in (dep["spec"]["template"]["metadata"].get("annotations") or {}):
        err(f"{name_of(dep)}: pod template needs the checksum/config annotation")

# 5. The loaders wait for the schema in one process, bounded; the migrate Job is named per image.
init = [c for c in loader["spec"]["template"]["spec"].get("initContainers", []) if "migrate" in (c.get("command") or [])]
if not init or "--check" not in init[0]["command"] or "--wait" not in init[0]["command"]:
    err("loader: an init container `loader migrate --check --wait <bound>` must wait for the schema")
migrate_jobs = [j for j in by_kind("Job") if j["metadata"]["labels"].get("app.kubernetes.io/component") == "migrate"]
if len(migrate_jobs) != 1:
    err("exactly one migrate Job")
# Defect 8. A rollback re-applies the older image's migrate Job against the newer schema: it must
# verify first (`--check` accepts migrations it does not know) and only apply when that fails.
for j in migrate_jobs:
    cmd = " ".join(j["spec"]["template"]["spec"]["containers"][0].get("command") or [])
    if not re.search(r"loader migrate --check\b[^|]*\|\|\s*(exec )?loader migrate\b", cmd):
        err(f"Job {name_of(j)}: must run `loader migrate --check || loader migrate` (a rollback's older image would fail on the newer schema): {cmd!r}")

# Defect 3. The consumer group is the release's own, never the shared default `loader`.
group = effective_env(loader["spec"]["template"]["spec"]["containers"][0]).get("KAFKA_GROUP_ID") if loader.get("metadata", {}).get("name") else None
release = loader["metadata"]["labels"].get("app.kubernetes.io/instance", "")
if group in (None, "", "loader") or (release and release not in group):
    err(f"loader: KAFKA_GROUP_ID {group!r} must default from the release ({release}-loader): two releases would share a group")

# Defect 7. Pull secrets on every pod or none: Jobs and the exporter pull too.
pull = {(d["kind"], name_of(d)): sorted(s["name"] for s in spec.get("imagePullSecrets") or []) for d, _, spec in all_pods()}
if len({tuple(v) for v in pull.values()}) > 1:
    err(f"imagePullSecrets differ between pods (every pod pulls an image): {pull}")

# 6. PDB: one loader at a time, and NotReady loaders (a database outage) stay evictable.
pdbs = by_kind("PodDisruptionBudget")
if not any(matches(p["spec"]["selector"], loader["spec"]["template"]["metadata"]["labels"]) for p in pdbs):
    err("no PodDisruptionBudget selects the loader pods")
for p in pdbs:
    if p["spec"].get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
        err(f"PodDisruptionBudget {name_of(p)}: unhealthyPodEvictionPolicy must be AlwaysAllow (a database outage makes every loader NotReady and drains would hang)")

# 1, continued. Scale targets resolve to the loader Deployment of this install; the autoscaler
#    owns the replica count.
scalers = by_kind("ScaledObject") + by_kind("HorizontalPodAutoscaler")
for s in scalers:
    target = s["spec"]["scaleTargetRef"]["name"]
    if target != loader["metadata"]["name"]:
        err(f"{s['kind']} {name_of(s)}: scaleTargetRef {target} is not the loader Deployment")
    if "replicas" in loader["spec"]:
        err("loader: an autoscaler owns the replica count; the Deployment must not set replicas")
    lo = s["spec"].get("minReplicaCount", s["spec"].get("minReplicas"))
    hi = s["spec"].get("maxReplicaCount", s["spec"].get("maxReplicas"))
    if not (1 <= lo <= hi <= 6):
        err(f"{s['kind']} {name_of(s)}: want 1 <= min <= max <= 6 partitions")

SO_SPEC = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
           "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"}
KAFKA_META = {"bootstrapServers", "bootstrapServersFromEnv", "consumerGroup", "consumerGroupFromEnv", "topic",
              "topicFromEnv", "lagThreshold", "activationLagThreshold", "offsetResetPolicy", "allowIdleConsumers",
              "scaleToZeroOnInvalidOffset", "excludePersistentLag", "limitToPartitionsWithLag",
              "ensureEvenDistributionOfPartitions", "partitionLimitation", "version", "sasl", "tls", "unsafeSsl"}
trigger_auths = {d["metadata"]["name"]: d for d in by_kind("TriggerAuthentication")}
for so in by_kind("ScaledObject"):
    p = f"ScaledObject {name_of(so)}"
    if so["apiVersion"] != "keda.sh/v1alpha1":
        err(f"{p}: apiVersion must be keda.sh/v1alpha1")
    for k in so["spec"]:
        if k not in SO_SPEC:
            err(f"{p}.spec: unknown field {k!r}")
    env = effective_env(loader["spec"]["template"]["spec"]["containers"][0])
    for i, t in enumerate(so["spec"]["triggers"]):
        tp = f"{p}.spec.triggers[{i}]"
        if t["type"] != "kafka":
            err(f"{tp}: expected a kafka trigger")
            continue
        md = t["metadata"]
        for k, v in md.items():
            if k not in KAFKA_META:
                err(f"{tp}.metadata: unknown field {k!r}")
            if not isinstance(v, str):
                err(f"{tp}.metadata.{k}: must be a string, got {v!r}")
        for need in ("lagThreshold", "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset"):
            if need not in md:
                err(f"{tp}.metadata: {need} missing")
        # KEDA counts a partition the group never committed as lag 1 under "latest", but as the
        # whole log under "earliest": a fresh group on a long topic would scale straight to max.
        if md.get("offsetResetPolicy") != "latest" and md.get("scaleToZeroOnInvalidOffset") != "true":
            err(f"{tp}.metadata.offsetResetPolicy: must be latest")
        for key in ("bootstrapServers", "consumerGroup", "topic"):
            if key + "FromEnv" in md and md[key + "FromEnv"] not in env:
                err(f"{tp}.metadata.{key}FromEnv: {md[key + 'FromEnv']} is not in the loader's environment")
        # A broker that wants SASL or a private CA wants it from KEDA too (TLS alone is the
        # trigger's `tls: enable`).
        secured = "KAFKA_SASL_MECHANISM" in env or "KAFKA_SSL_CA_LOCATION" in env
        ref = (t.get("authenticationRef") or {}).get("name")
        if secured and ref not in trigger_auths:
            err(f"{tp}: SASL or a CA is configured: needs an authenticationRef to a TriggerAuthentication of this install")
        if ref and ref not in trigger_auths:
            err(f"{tp}: authenticationRef {ref} is not part of the install")
        if env.get("KAFKA_SECURITY_PROTOCOL", "").lower() in ("ssl", "sasl_ssl") and md.get("tls") != "enable":
            err(f"{tp}.metadata.tls: must be enable with KAFKA_SECURITY_PROTOCOL {env.get('KAFKA_SECURITY_PROTOCOL')}")

# The TriggerAuthentication's secrets are the ones the loaders mount.
mounted_secrets = {v["secret"]["secretName"] for v in loader["spec"]["template"]["spec"].get("volumes", []) if "secret" in v}
for ta in trigger_auths.values():
    if not (ta.get("spec") or {}).get("secretTargetRef") and not (ta.get("spec") or {}).get("env"):
        err(f"TriggerAuthentication {name_of(ta)}: empty spec (nothing to authenticate with)")
    for ref in (ta.get("spec") or {}).get("secretTargetRef") or []:
        if ref["name"] not in mounted_secrets:
            err(f"TriggerAuthentication {name_of(ta)}: Secret {ref['name']} is not the one the loaders use")
        if ref["parameter"] not in ("sasl", "username", "password", "tls", "ca", "cert", "key", "keyPassword"):
            err(f"TriggerAuthentication {name_of(ta)}: unknown parameter {ref['parameter']!r}")

# 4. An HPA on CPU must be able to fire: its target, as cores, under what a loader uses at
#    full speed (the smallest "loader CPU (cores)" in BENCHMARKS.md's latest table).
bench = open("BENCHMARKS.md").read()
full_speed = [float(m) for m in re.findall(r"^\| loader[^\n]*\| (\d+\.\d+) \| \d+\.\d+ \|$", bench, re.M)]
for hpa in by_kind("HorizontalPodAutoscaler"):
    request = loader["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"].get("cpu", "0")
    cores = float(request[:-1]) / 1000 if str(request).endswith("m") else float(request)
    for m in hpa["spec"]["metrics"]:
        if m["type"] == "Resource" and m["resource"]["name"] == "cpu":
            target = cores * m["resource"]["target"]["averageUtilization"] / 100
            if not full_speed or target >= min(full_speed):
                err(f"HPA {name_of(hpa)}: scales out above {target:.2f} cores, but a loader at full speed uses "
                    f"{min(full_speed) if full_speed else '?'} (BENCHMARKS.md): it would never scale out")

# ServiceMonitor: selects this install's two Services, relabels job to etl-<name>.
for sm in by_kind("ServiceMonitor"):
    p = f"ServiceMonitor {name_of(sm)}"
    spec = sm["spec"]
    if spec.get("namespaceSelector"):
        err(f"{p}: no namespaceSelector (it scrapes its own namespace)")
    chosen = [s for s in services if matches(spec["selector"], s["metadata"].get("labels", {}))]
    names = sorted(s["metadata"]["labels"].get("app.kubernetes.io/name") for s in chosen)
    want = sorted(s["metadata"]["labels"].get("app.kubernetes.io/name") for s in services)
    if names != want or not {"extractor", "loader"} <= set(names):
        err(f"{p}: should select every Service of this install ({want}), selects {names}")
    for i, ep in enumerate(spec["endpoints"]):
        if not any(r.get("targetLabel") == "job" and r.get("replacement") == "etl-$1"
                   and r.get("sourceLabels") == ["__meta_kubernetes_service_label_app_kubernetes_io_name"]
                   for r in ep.get("relabelings", [])):
            err(f"{p}.endpoints[{i}]: must relabel job to etl-<app.kubernetes.io/name>")
        # Defect 3: the alerts tell two releases in one namespace apart by `release`.
        if not any(r.get("targetLabel") == "release" and r.get("sourceLabels") == ["__meta_kubernetes_service_label_app_kubernetes_io_instance"]
                   for r in ep.get("relabelings", [])):
            err(f"{p}.endpoints[{i}]: must relabel release from app.kubernetes.io/instance")
        for s in chosen:
            if ep.get("port") not in {pp.get("name") for pp in s["spec"]["ports"]}:
                err(f"{p}.endpoints[{i}]: Service {name_of(s)} has no port named {ep.get('port')!r}")
# Defect 3: a release's rules see its own series only: every selector carries its namespace and
# release, so another release's loaders never hide this one's absence.
for pr in by_kind("PrometheusRule"):
    if not pr["spec"].get("groups"):
        err(f"PrometheusRule {name_of(pr)}: no rule groups")
    rel = pr["metadata"]["labels"].get("app.kubernetes.io/instance")
    scope = f'namespace="{namespace}",release="{rel}"'
    for g in pr["spec"]["groups"]:
        for r in g["rules"]:
            for metric, sel in re.findall(r"\b(etl_[a-z0-9_]+|up|kafka_consumergroup_lag)\b(\{[^}]*\})?", r["expr"]):
                if scope not in (sel or ""):
                    err(f"PrometheusRule {name_of(pr)}: {r.get('alert')}: selector {metric}{sel} is not scoped to {scope}")

# Services select their pods.
for s in services:
    pods = [d for d in deployments.values() if matches({"matchLabels": s["spec"]["selector"]}, d["spec"]["template"]["metadata"]["labels"])]
    if len(pods) != 1:
        err(f"Service {name_of(s)}: selects {len(pods)} Deployments")

# Defect 4. kafka_exporter knows scram-sha512, scram-sha256, plain and gssapi; anything else
# (e.g. "sha512") and it crash-loops.
for d, _, spec in all_pods():
    for c in spec["containers"]:
        for a in c.get("args") or []:
            m = re.match(r"--sasl\.mechanism=(.*)", str(a))
            if m and m.group(1) not in ("scram-sha512", "scram-sha256", "plain", "gssapi"):
                err(f"{d['kind']} {name_of(d)}/{c['name']}: --sasl.mechanism={m.group(1)} is not one kafka_exporter accepts")
        if "--sasl.enabled" in (c.get("args") or []) and not any(str(a).startswith("--sasl.mechanism=") for a in c["args"]):
            err(f"{d['kind']} {name_of(d)}/{c['name']}: --sasl.enabled needs an explicit --sasl.mechanism")

# 10. NetworkPolicy: DNS through NodeLocal DNSCache too; Kafka's SASL/SCRAM and IAM ports (MSK).
policies = by_kind("NetworkPolicy")
if policies:
    dns = [p for p in policies if any(
        any(pt.get("port") == 53 for pt in e.get("ports", [])) for e in p["spec"].get("egress", []))]
    if not any(any(t.get("ipBlock", {}).get("cidr") == "169.254.20.10/32" for e in p["spec"]["egress"] for t in e.get("to", [])) for p in dns):
        err("NetworkPolicy: DNS egress must include NodeLocal DNSCache (169.254.20.10/32)")
    for dep in (extractor, loader):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        ports = {pt.get("port") for p in policies if matches(p["spec"]["podSelector"], labels)
                 for e in p["spec"].get("egress", []) for pt in e.get("ports", [])}
        for need in (9092, 9093, 9094, 9096, 9098):
            if need not in ports:
                err(f"NetworkPolicy: {name_of(dep)} needs Kafka egress on {need}")
        ingress = [i for p in policies if matches(p["spec"]["podSelector"], labels) for i in p["spec"].get("ingress", [])]
        if not ingress:
            err(f"NetworkPolicy: {name_of(dep)} must admit Prometheus on its metrics port")


def egress_open(labels, port, dest_labels=None):
    """Whether the policies let a pod with `labels` open TCP `port` to a destination: a pod of
    this namespace with dest_labels, or (None) any address outside the cluster's pods."""
    selecting = [p for p in policies if matches(p["spec"]["podSelector"], labels) and "Egress" in p["spec"].get("policyTypes", [])]
    if not selecting:
        return True
    for p in selecting:
        for e in p["spec"].get("egress") or []:
            if e.get("ports") and not any(pt.get("port") == port for pt in e["ports"]):
                continue
            if not e.get("to"):
                return True
            for t in e["to"]:
                if dest_labels == "kube-dns" and matches(t.get("podSelector") or {"matchLabels": {"x": "never"}}, {"k8s-app": "kube-dns"}):
                    return True
                if isinstance(dest_labels, dict) and "podSelector" in t and "namespaceSelector" not in t and matches(t["podSelector"], dest_labels):
                    return True
                if dest_labels is None and t.get("ipBlock", {}).get("cidr") == "0.0.0.0/0":
                    return True
    return False


def ingress_open(labels, port, src_labels):
    selecting = [p for p in policies if matches(p["spec"]["podSelector"], labels) and "Ingress" in p["spec"].get("policyTypes", [])]
    if not selecting:
        return True
    for p in selecting:
        for i in p["spec"].get("ingress") or []:
            if i.get("ports") and not any(pt.get("port") == port for pt in i["ports"]):
                continue
            if not i.get("from") or any("podSelector" in f and "namespaceSelector" not in f and matches(f["podSelector"], src_labels) for f in i["from"]):
                return True
    return False


def host_ports(text, default):
    return {int(m) if m else default for m in re.findall(r"[^,\s:/]+(?::(\d+))?", text or "")} if text else set()


# Defect 1. Reachability for EVERY pod (Deployments, Jobs, the test Pod): each may open what it
# is configured to talk to. Kafka: the ports of its broker list; PostgreSQL: 5432 where it has a
# database URL; the Parquet store: 443 or AWS_ENDPOINT_URL's port; DNS everywhere; the test Pod
# the Services' metrics ports (and they admit it).
if policies:
    svc_ports = [(s, pp["port"]) for s in services for pp in s["spec"]["ports"]]
    for d, labels, spec in all_pods():
        who = f"{d['kind']} {name_of(d)}"
        if not egress_open(labels, 53, "kube-dns"):
            err(f"NetworkPolicy: {who} cannot resolve names (DNS egress)")
        for c in spec.get("initContainers", []) + spec["containers"]:
            env = effective_env(c)
            args = " ".join(str(a) for a in (c.get("args") or []))
            brokers = env.get("KAFKA_BROKERS") or ",".join(re.findall(r"--kafka\.server=(\S+)", args))
            for port in sorted(host_ports(brokers, 9092)):
                if not egress_open(labels, port):
                    err(f"NetworkPolicy: {who}/{c['name']} cannot reach Kafka on {port} ({brokers})")
            if any(e.get("name") == "DATABASE_URL_FILE" for e in c.get("env") or []) and not egress_open(labels, 5432):
                err(f"NetworkPolicy: {who}/{c['name']} cannot reach PostgreSQL on 5432")
            url = env.get("PARQUET_URL") or ""
            if re.match(r"(s3|gs|az|abfss?)://", url) and c["name"] in ("loader", "backfill"):
                endpoint = env.get("AWS_ENDPOINT_URL") or ""
                m = re.match(r"\w+://[^/:]+:(\d+)", endpoint)
                port = int(m.group(1)) if m else (80 if endpoint.startswith("http://") else 443)
                if not egress_open(labels, port):
                    err(f"NetworkPolicy: {who}/{c['name']} cannot reach the Parquet store on {port}")
            for m in re.finditer(r"http://([a-z0-9-]+):(\d+)/", " ".join(str(x) for x in c.get("command") or [])):
                target = [s for s in services if name_of(s) == m.group(1)]
                if not target:
                    err(f"{who}/{c['name']}: {m.group(1)} is not a Service of this install")
                    continue
                dest = [dd for dd in deployments.values() if matches({"matchLabels": target[0]["spec"]["selector"]}, dd["spec"]["template"]["metadata"]["labels"])]
                for dd in dest:
                    dl = dd["spec"]["template"]["metadata"]["labels"]
                    if not egress_open(labels, int(m.group(2)), dl) or not ingress_open(dl, int(m.group(2)), labels):
                        err(f"NetworkPolicy: {who}/{c['name']} cannot reach {name_of(dd)} on {m.group(2)}")
    # IMDS is open only where asked for (networkPolicy.cloudMetadata).
    for p in policies:
        for e in p["spec"].get("egress") or []:
            for t in e.get("to") or []:
                if t.get("ipBlock", {}).get("cidr") == "169.254.169.254/32" and where != "cloud-metadata":
                    err(f"NetworkPolicy {name_of(p)}: egress to the instance metadata service without networkPolicy.cloudMetadata")

for e in errors:
    print(f"  - {where}: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
