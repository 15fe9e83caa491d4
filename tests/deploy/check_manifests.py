#!/usr/bin/env python3
"""Check the rendered manifests (base and every overlay) against the deployment
requirements: the names the runbook uses, Guaranteed QoS with whole CPUs for the
static CPU manager, dedicated nodes, probes, drain timing, security context,
secrets and config wiring, Services, NetworkPolicy, PDB and monitoring objects.
Also checks deploy/Dockerfile.
"""
import json
import re
import sys

import yaml

from _common import (DEPLOY, FILE_FLAGS, DURATION_FLAGS, FORBIDDEN_FLAGS, INTEGER_FLAGS, MC_ENV,
                     Results, exit_with, humantime_seconds, kustomization_dirs,
                     kustomize_build, rel)

NS = "dark-tower"
APP = {"app": "meeting-controller"}
SECRET_MOUNT = "/etc/mc/secrets"
SECRET_KEYS = {"tls.crt", "tls.key", "jwks.json", "gc-token", "gc-inbound-token", "admin-token", "binding-secret"}
CONFIG_FILE_FLAG_KEY = {
    "MC_TLS_CERT": "tls.crt", "MC_TLS_KEY": "tls.key", "MC_JWKS": "jwks.json",
    "MC_GC_TOKEN_FILE": "gc-token", "MC_GC_INBOUND_TOKEN_FILE": "gc-inbound-token",
    "MC_ADMIN_TOKEN_FILE": "admin-token", "MC_BINDING_SECRET_FILE": "binding-secret",
}


def cpu_cores(q):
    q = str(q)
    if q.endswith("m"):
        return int(q[:-1]) / 1000.0
    return float(q)


def mem_bytes(q):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTPE]i?|[kmgtpe])?", str(q))
    if not m:
        return None
    mult = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    return float(m.group(1)) * mult.get(m.group(2), 1)


def by_kind(docs):
    out = {}
    for d in docs:
        out.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    return out


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_render(res, where, docs):
    objs = by_kind(docs)
    dep = objs.get("Deployment", {}).get("meeting-controller")
    cm = objs.get("ConfigMap", {}).get("mc-service-config")
    if not res.check(dep is not None, f"{where}: Deployment meeting-controller exists"):
        return
    if not res.check(cm is not None, f"{where}: ConfigMap mc-service-config exists (runbook name)"):
        return
    data = cm.get("data") or {}

    # --- Deployment -------------------------------------------------------------
    res.check(dep["metadata"].get("namespace") == NS, f"{where}: Deployment in {NS}")
    res.check(labels_match(APP, dep["metadata"].get("labels")), f"{where}: Deployment labelled app=meeting-controller")
    res.check(dep["spec"]["selector"].get("matchLabels") == APP, f"{where}: selector is exactly app=meeting-controller")
    tpl = dep["spec"]["template"]
    pod = tpl["spec"]
    res.check(labels_match(APP, tpl["metadata"].get("labels")), f"{where}: pod template labelled app=meeting-controller")
    res.check(int(dep["spec"].get("replicas", 1)) >= 2, f"{where}: at least 2 replicas")

    containers = pod.get("containers") or []
    names = [c["name"] for c in containers]
    res.check(names == ["meeting-controller"], f"{where}: one container named meeting-controller", names)
    res.check(not pod.get("initContainers"), f"{where}: no init containers (they would need their own cores)")
    c = containers[0]

    # Guaranteed QoS, whole CPUs.
    r = c.get("resources") or {}
    req, lim = r.get("requests") or {}, r.get("limits") or {}
    for key in ("cpu", "memory"):
        res.check(key in req and key in lim, f"{where}: {key} request and limit set")
    if "cpu" in req and "cpu" in lim:
        res.check(cpu_cores(req["cpu"]) == cpu_cores(lim["cpu"]), f"{where}: cpu requests == limits (Guaranteed)",
                  f"{req['cpu']} vs {lim['cpu']}")
        cores = cpu_cores(lim["cpu"])
        res.check(cores >= 1 and cores == int(cores), f"{where}: integer CPU count for the static CPU manager", lim["cpu"])
    if "memory" in req and "memory" in lim:
        res.check(mem_bytes(req["memory"]) == mem_bytes(lim["memory"]), f"{where}: memory requests == limits (Guaranteed)")
        io_mem = int(data.get("MC_IO_MEMORY", 1048576))
        shards = int(data.get("MC_SHARDS", cpu_cores(lim.get("cpu", 1))))
        res.check(mem_bytes(lim["memory"]) >= 16 * shards * io_mem,
                  f"{where}: memory limit leaves room for shards x io-memory locked memory")

    # Dedicated nodes.
    res.check((pod.get("nodeSelector") or {}).get("dark-tower.io/dedicated") == "meeting-controller",
              f"{where}: nodeSelector dark-tower.io/dedicated=meeting-controller")
    tol = [t for t in pod.get("tolerations") or [] if t.get("key") == "dark-tower.io/dedicated"]
    res.check(any(t.get("value") == "meeting-controller" and t.get("effect") == "NoSchedule"
                  and t.get("operator", "Equal") == "Equal" for t in tol),
              f"{where}: toleration for the dedicated taint")
    aa = ((pod.get("affinity") or {}).get("podAntiAffinity") or {})
    req_terms = aa.get("requiredDuringSchedulingIgnoredDuringExecution") or []
    res.check(any(t.get("topologyKey") == "kubernetes.io/hostname"
                  and labels_match(APP, (t.get("labelSelector") or {}).get("matchLabels")) for t in req_terms),
              f"{where}: required pod anti-affinity per node")

    # Ports and probes.
    ports = {p["name"]: p for p in c.get("ports") or []}
    res.check(ports.get("control", {}).get("containerPort") == 8080 and ports["control"].get("protocol", "TCP") == "TCP",
              f"{where}: port 8080/TCP named control")
    res.check(ports.get("quic", {}).get("containerPort") == 4433 and ports["quic"].get("protocol") == "UDP",
              f"{where}: port 4433/UDP named quic")
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready"), ("startupProbe", "/health")):
        hg = (c.get(probe) or {}).get("httpGet") or {}
        res.check(hg.get("path") == path and hg.get("port") in ("control", 8080), f"{where}: {probe} GET {path} on control",
                  hg)
    lp = c.get("livenessProbe") or {}
    res.check(lp.get("periodSeconds", 10) * lp.get("failureThreshold", 3) >= 20,
              f"{where}: liveness tolerates >= 20 s of failures")

    # Termination and drain timing.
    drain = humantime_seconds(data.get("MC_DRAIN_TIMEOUT", "60s"))
    res.check(drain is not None, f"{where}: MC_DRAIN_TIMEOUT parses", data.get("MC_DRAIN_TIMEOUT"))
    pre = ((c.get("lifecycle") or {}).get("preStop") or {})
    res.check("exec" not in pre, f"{where}: preStop uses no exec (distroless image has no shell)")
    sleep = (pre.get("sleep") or {}).get("seconds", 0)
    res.check(0 < sleep <= 15, f"{where}: short preStop sleep", pre)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if drain is not None:
        res.check(grace >= sleep + drain + 10, f"{where}: terminationGracePeriodSeconds ({grace}) >= preStop ({sleep}) "
                  f"+ drain ({drain:g}) + 10 s")

    # Security context.
    psc = pod.get("securityContext") or {}
    csc = c.get("securityContext") or {}

    def eff(key):
        return csc.get(key, psc.get(key))

    res.check(eff("runAsNonRoot") is True, f"{where}: runAsNonRoot")
    res.check(eff("runAsUser") == 65532, f"{where}: runAsUser 65532")
    res.check(csc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
    res.check(csc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation false")
    res.check(not csc.get("privileged"), f"{where}: not privileged")
    caps = csc.get("capabilities") or {}
    res.check(caps.get("drop") == ["ALL"], f"{where}: drop ALL capabilities")
    res.check(not caps.get("add"), f"{where}: no added capabilities (IPC_LOCK not needed)", caps.get("add"))
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    res.check(seccomp in ("RuntimeDefault", "Localhost"), f"{where}: seccomp RuntimeDefault or Localhost", seccomp)
    res.check(not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"),
              f"{where}: no host namespaces")
    res.check(pod.get("automountServiceAccountToken") is False, f"{where}: no service account token")

    # Volumes: secrets read-only at /etc/mc/secrets, /tmp emptyDir.
    vols = {v["name"]: v for v in pod.get("volumes") or []}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
    sm = mounts.get(SECRET_MOUNT)
    sv = vols.get(sm["name"]) if sm else None
    res.check(sm is not None and sm.get("readOnly") is True, f"{where}: secrets mounted read-only at {SECRET_MOUNT}")
    res.check(sv is not None and (sv.get("secret") or {}).get("secretName") == "mc-service-secrets",
              f"{where}: secret volume is mc-service-secrets (runbook name)")
    items = {i["path"] for i in ((sv or {}).get("secret") or {}).get("items") or []} or SECRET_KEYS
    res.check(SECRET_KEYS <= items, f"{where}: every secret file projected", sorted(SECRET_KEYS - items))
    tmp = mounts.get("/tmp")
    res.check(tmp is not None and "emptyDir" in vols.get(tmp["name"], {}), f"{where}: /tmp is an emptyDir")

    # Environment: ConfigMap keys are real flags with valid values.
    env_from = [e.get("configMapRef", {}).get("name") for e in c.get("envFrom") or []]
    res.check("mc-service-config" in env_from, f"{where}: envFrom mc-service-config")
    for key, value in data.items():
        if key.startswith("MC_"):
            flag = MC_ENV.get(key)
            if not res.check(flag is not None, f"{where}: ConfigMap key {key} is an MC flag"):
                continue
            res.check(flag not in FORBIDDEN_FLAGS, f"{where}: {key} (development/test switch) not set in production")
            if flag in DURATION_FLAGS:
                res.check(humantime_seconds(value) is not None, f"{where}: {key}={value!r} is a humantime duration")
            if flag in INTEGER_FLAGS:
                res.check(re.fullmatch(r"[1-9][0-9]*", str(value)) is not None, f"{where}: {key}={value!r} is an integer")
            if flag in FILE_FLAGS:
                want = f"{SECRET_MOUNT}/{CONFIG_FILE_FLAG_KEY[key]}"
                res.check(value == want, f"{where}: {key} points at {want}", value)
            if flag in ("listen", "control-listen"):
                res.check(re.fullmatch(r"[0-9.]+:\d+|\[[0-9a-f:]+\]:\d+", value) is not None, f"{where}: {key} is host:port")
        res.check(isinstance(value, str) and value != "", f"{where}: ConfigMap {key} is a non-empty string")
    res.check(data.get("MC_LISTEN", "0.0.0.0:4433").endswith(":4433"), f"{where}: MC_LISTEN on 4433")
    res.check(data.get("MC_CONTROL_LISTEN", "0.0.0.0:8080").endswith(":8080"), f"{where}: MC_CONTROL_LISTEN on 8080")
    res.check(data.get("MC_LOG_FORMAT", "json") in ("json", "text"), f"{where}: MC_LOG_FORMAT json|text")
    for key in ("MC_TLS_CERT", "MC_TLS_KEY", "MC_JWKS", "MC_GC_URL", "MC_GC_TOKEN_FILE", "MC_GC_INBOUND_TOKEN_FILE",
                "MC_ADMIN_TOKEN_FILE", "MC_BINDING_SECRET_FILE", "MC_DRAIN_TIMEOUT", "MC_MAX_MEETINGS",
                "MC_ALLOWED_ORIGINS"):
        res.check(key in data, f"{where}: ConfigMap sets {key}")

    env = c.get("env") or []
    env_names = [e["name"] for e in env]
    mc_id = next((e for e in env if e["name"] == "MC_MC_ID"), {})
    res.check(((mc_id.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") == "metadata.name",
              f"{where}: MC_MC_ID from the pod name (downward API)")
    for e in env:
        if e["name"].startswith("MC_"):
            res.check(e["name"] in MC_ENV, f"{where}: env {e['name']} is an MC flag")
            res.check(MC_ENV.get(e["name"]) not in FORBIDDEN_FLAGS, f"{where}: env {e['name']} not a dev/test switch")
    for key in ("MC_ADVERTISE_QUIC", "MC_ADVERTISE_WEBTRANSPORT"):
        res.check(key in env_names or key in data, f"{where}: {key} set")
    # $(VAR) references must resolve: ConfigMap keys or earlier env entries.
    known = set(data)
    for e in env:
        for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e.get("value", "")):
            res.check(ref in known, f"{where}: env {e['name']} reference $({ref}) resolves")
        known.add(e["name"])
    origins = data.get("MC_ALLOWED_ORIGINS", "")
    res.check(all(o.strip().startswith("https://") for o in origins.split(",")) and "*" not in origins,
              f"{where}: MC_ALLOWED_ORIGINS lists https origins, no wildcard", origins)
    wt = next((e.get("value") for e in env if e["name"] == "MC_ADVERTISE_WEBTRANSPORT"), data.get("MC_ADVERTISE_WEBTRANSPORT", ""))
    res.check(str(wt).startswith("https://"), f"{where}: WebTransport URL is https", wt)

    # --- Services -----------------------------------------------------------------
    svcs = objs.get("Service", {})
    ctl = svcs.get("meeting-controller")
    if res.check(ctl is not None, f"{where}: Service meeting-controller (runbook DNS name)"):
        res.check(ctl["spec"].get("type", "ClusterIP") == "ClusterIP", f"{where}: meeting-controller is ClusterIP")
        res.check(ctl["spec"].get("selector") == APP, f"{where}: meeting-controller selects app=meeting-controller")
        p = ctl["spec"]["ports"]
        res.check(len(p) == 1 and p[0]["port"] == 8080 and p[0].get("protocol", "TCP") == "TCP"
                  and p[0].get("name") == "control" and p[0].get("targetPort") in ("control", 8080),
                  f"{where}: meeting-controller exposes TCP 8080 as control")
    quic = [s for s in svcs.values()
            if any(p.get("protocol") == "UDP" for p in s["spec"].get("ports", []))]
    if res.check(len(quic) == 1, f"{where}: one UDP Service"):
        q = quic[0]
        res.check(q["spec"].get("type") in ("NodePort", "LoadBalancer"), f"{where}: UDP Service is NodePort/LoadBalancer")
        res.check(q["spec"].get("externalTrafficPolicy") == "Local", f"{where}: UDP Service externalTrafficPolicy Local")
        res.check(q["spec"].get("selector") == APP, f"{where}: UDP Service selects app=meeting-controller")
        qp = q["spec"]["ports"]
        res.check(len(qp) == 1 and qp[0].get("name") == "quic" and qp[0].get("targetPort") in ("quic", 4433)
                  and qp[0].get("protocol") == "UDP", f"{where}: UDP Service port named quic -> 4433")
        if qp and "nodePort" in qp[0] and "ADVERTISE_PORT" in data:
            res.check(str(qp[0]["nodePort"]) == data["ADVERTISE_PORT"], f"{where}: advertised port == nodePort")

    # --- NetworkPolicy ----------------------------------------------------------------
    np_ = objs.get("NetworkPolicy", {}).get("meeting-controller")
    if res.check(np_ is not None, f"{where}: NetworkPolicy meeting-controller (runbook name)"):
        spec = np_["spec"]
        res.check((spec.get("podSelector") or {}).get("matchLabels") == APP, f"{where}: NetworkPolicy selects the MC")
        res.check(set(spec.get("policyTypes", [])) == {"Ingress", "Egress"}, f"{where}: NetworkPolicy covers both directions")
        ingress = spec.get("ingress") or []
        udp_open = [r for r in ingress if not r.get("from")
                    and [(p.get("protocol"), p.get("port")) for p in r.get("ports", [])] == [("UDP", 4433)]]
        res.check(len(udp_open) == 1, f"{where}: UDP 4433 open to any source")
        tcp = [r for r in ingress if r.get("from")]
        res.check(len(tcp) == 1 and [(p.get("protocol"), p.get("port")) for p in tcp[0].get("ports", [])] == [("TCP", 8080)],
                  f"{where}: TCP 8080 is the only restricted ingress rule")
        peers = tcp[0]["from"] if tcp else []
        gc = [p for p in peers if (p.get("podSelector") or {}).get("matchLabels") == {"app": "global-controller"}
              and "namespaceSelector" not in p]
        prom = [p for p in peers if (p.get("namespaceSelector") or {}).get("matchLabels")
                == {"kubernetes.io/metadata.name": "monitoring"}]
        res.check(len(gc) == 1 and len(prom) == 1 and len(peers) == 2, f"{where}: 8080 only from GC pods and monitoring ns",
                  peers)
        res.check(len(ingress) == 2, f"{where}: no other ingress rules")
        egress = spec.get("egress") or []
        ok_rules = 0
        for rule in egress:
            ports = sorted((p.get("protocol", "TCP"), p.get("port")) for p in rule.get("ports", []))
            to = rule.get("to") or []
            if ports == [("TCP", 8080)] and to == [{"podSelector": {"matchLabels": {"app": "global-controller"}}}]:
                ok_rules += 1
            elif ports == [("TCP", 53), ("UDP", 53)] and to:
                ok_rules += 1
        res.check(ok_rules == len(egress) == 2, f"{where}: egress only to GC:8080 and DNS", egress)

    # --- PDB ------------------------------------------------------------------------------
    pdbs = list(objs.get("PodDisruptionBudget", {}).values())
    res.check(len(pdbs) == 1 and (pdbs[0]["spec"].get("selector") or {}).get("matchLabels") == APP,
              f"{where}: PodDisruptionBudget selects the MC")
    if pdbs:
        spec = pdbs[0]["spec"]
        res.check(spec.get("maxUnavailable") == 1 or "minAvailable" in spec, f"{where}: PDB allows one eviction at a time")

    # --- Monitoring -------------------------------------------------------------------------
    sm = objs.get("ServiceMonitor", {}).get("meeting-controller")
    if res.check(sm is not None, f"{where}: ServiceMonitor meeting-controller"):
        sel = sm["spec"]["selector"].get("matchLabels") or {}
        matched = [s for s in svcs.values() if labels_match(sel, s["metadata"].get("labels"))]
        res.check([s["metadata"]["name"] for s in matched] == ["meeting-controller"],
                  f"{where}: ServiceMonitor selects only the control Service", [s["metadata"]["name"] for s in matched])
        ports = {p.get("name") for s in matched for p in s["spec"]["ports"]}
        res.check(all(ep.get("port") in ports for ep in sm["spec"]["endpoints"]), f"{where}: ServiceMonitor port exists")
        res.check(all(ep.get("path", "/metrics") == "/metrics" for ep in sm["spec"]["endpoints"]),
                  f"{where}: ServiceMonitor scrapes /metrics")
    pr = objs.get("PrometheusRule", {}).get("meeting-controller")
    if res.check(pr is not None, f"{where}: PrometheusRule meeting-controller"):
        rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
        res.check(pr["spec"] == rules, f"{where}: PrometheusRule spec == deploy/prometheus/rules.yml")

    # No Secret with real material in git; no Namespace object (shared with the GC).
    res.check("Secret" not in objs, f"{where}: no Secret rendered (created out of band)")
    res.check("Namespace" not in objs, f"{where}: Namespace not managed here (shared with the GC)")


def check_dockerfile(res):
    path = DEPLOY / "Dockerfile"
    if not res.check(path.exists(), "deploy/Dockerfile exists"):
        return
    text = path.read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
    res.check(len(froms) == 2, "Dockerfile is two-stage", froms)
    res.check(bool(froms) and re.match(r"FROM rust:1\.95-bookworm\b", froms[0]) is not None, "builder is rust:1.95-bookworm")
    res.check(bool(froms) and froms[-1].split()[1] == "gcr.io/distroless/cc-debian12:nonroot",
              "runtime is gcr.io/distroless/cc-debian12:nonroot")
    res.check(re.search(r"apt-get install[^\n]*\bcmake\b", text) is not None and re.search(r"\bclang\b", text) is not None,
              "builder installs cmake and clang (quiche/BoringSSL)")
    res.check(re.search(r"cargo build[^\n]*--release[^\n]*--bin mc\b", text) is not None, "cargo build --release --bin mc")
    ep = [ln for ln in lines if ln.upper().startswith("ENTRYPOINT")]
    try:
        ep_argv = json.loads(ep[0].split(None, 1)[1]) if len(ep) == 1 else None
    except ValueError:
        ep_argv = None
    res.check(ep_argv == ["/usr/local/bin/mc", "serve"], 'ENTRYPOINT ["/usr/local/bin/mc", "serve"] (exec form)', ep)
    user = [ln for ln in lines if ln.upper().startswith("USER ")]
    res.check(bool(user) and user[-1].split()[1] in ("65532", "65532:65532", "nonroot", "nonroot:nonroot"),
              "runs as uid 65532", user)
    res.check(not any(ln.upper().startswith(("RUN ", "SHELL ")) for ln in lines[lines.index(froms[-1]):]) if froms else False,
              "no RUN in the distroless stage")
    ign = DEPLOY / "Dockerfile.dockerignore"
    res.check(ign.exists() and re.search(r"^/?target/?$|^\*\*/target", ign.read_text(), re.M) is not None,
              "deploy/Dockerfile.dockerignore excludes target/")


def main():
    res = Results("check_manifests")
    for directory in kustomization_dirs():
        try:
            docs = kustomize_build(directory)
        except RuntimeError as e:
            res.check(False, f"render {rel(directory)}", str(e))
            continue
        check_render(res, rel(directory), docs)
    check_dockerfile(res)
    exit_with(res)


if __name__ == "__main__":
    main()
