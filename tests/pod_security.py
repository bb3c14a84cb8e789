"""A checker for the `restricted` Pod Security Standard, written from its documented rules.

Source: https://kubernetes.io/docs/concepts/security/pod-security-standards/ (the Baseline and Restricted
policy tables). checkov cannot read a PyTorchJob (a custom resource), so the job's pod templates are checked
here, with the same rules for every other pod template the project ships. Each rule below names the
control of that page it implements; `restricted_violations` returns [] when a pod spec passes them all.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

# Baseline "Capabilities": what a container may add at most; Restricted allows only NET_BIND_SERVICE.
RESTRICTED_ADD_CAPABILITIES = {"NET_BIND_SERVICE"}
# Restricted "Volume Types".
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
# Baseline "Sysctls": the safe set.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
SECCOMP_RESTRICTED = {"RuntimeDefault", "Localhost"}
VOLUME_SOURCE_KEYS = {"name"}


def _containers(pod: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod.get(field) or []:
            found.append((f"{field}[{container.get('name', '?')}]", container))
    return found


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The restricted-profile rules `pod` (a PodSpec as a dict) breaks, one line each."""
    problems: list[str] = []
    psc = pod.get("securityContext") or {}
    containers = _containers(pod)

    # Baseline: Host Namespaces.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{field} must be unset or false")
    # Baseline: HostProcess (pod and containers).
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        problems.append("securityContext.windowsOptions.hostProcess must be unset or false")
    # Baseline: Sysctls.
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl.get('name')!r} is not in the safe set")
    # Baseline: SELinux (pod level).
    if (psc.get("seLinuxOptions") or {}).get("type") not in SELINUX_TYPES:
        problems.append("securityContext.seLinuxOptions.type is not an allowed type")
    # Baseline: AppArmor (pod level).
    if (psc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
        problems.append("securityContext.appArmorProfile.type must be RuntimeDefault or Localhost")

    # Restricted: Volume Types (this includes Baseline: HostPath Volumes).
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - VOLUME_SOURCE_KEYS
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume.get('name')!r} is of a forbidden type: {sorted(kinds)}")

    pod_non_root = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    # Baseline: Seccomp (not Unconfined).
    if pod_seccomp == "Unconfined":
        problems.append("securityContext.seccompProfile.type must not be Unconfined")
    # Restricted: Running as Non-root user (pod level).
    if psc.get("runAsUser") == 0:
        problems.append("securityContext.runAsUser must not be 0")

    if not containers:
        problems.append("the pod has no containers")
    for where, container in containers:
        sc = container.get("securityContext") or {}
        # Baseline: Privileged Containers.
        if sc.get("privileged"):
            problems.append(f"{where}: privileged must be unset or false")
        # Baseline: HostProcess.
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            problems.append(f"{where}: windowsOptions.hostProcess must be unset or false")
        # Baseline: Host Ports.
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort must be unset or 0")
        # Baseline: /proc Mount Type.
        if sc.get("procMount") not in (None, "Default"):
            problems.append(f"{where}: procMount must be unset or Default")
        # Baseline: SELinux, AppArmor (container level).
        if (sc.get("seLinuxOptions") or {}).get("type") not in SELINUX_TYPES:
            problems.append(f"{where}: seLinuxOptions.type is not an allowed type")
        if (sc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
            problems.append(f"{where}: appArmorProfile.type must be RuntimeDefault or Localhost")
        # Restricted: Privilege Escalation.
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        # Restricted: Running as Non-root (the pod's setting, unless the container says false; else the
        # container's own must be true).
        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            problems.append(f"{where}: runAsNonRoot must be true (pod or container)")
        # Restricted: Running as Non-root user.
        if sc.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser must not be 0")
        # Restricted: Seccomp.
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp == "Unconfined" or (seccomp is None and pod_seccomp not in SECCOMP_RESTRICTED):
            problems.append(
                f"{where}: seccompProfile.type must be RuntimeDefault or Localhost (pod or container)"
            )
        elif seccomp is not None and seccomp not in SECCOMP_RESTRICTED:
            problems.append(f"{where}: seccompProfile.type must be RuntimeDefault or Localhost")
        # Restricted: Capabilities.
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{where}: capabilities.drop must include ALL")
        extra = set(caps.get("add") or []) - RESTRICTED_ADD_CAPABILITIES
        if extra:
            problems.append(f"{where}: capabilities.add may only hold NET_BIND_SERVICE, got {sorted(extra)}")
    return problems


# -- the pods as the Training Operator creates them ---------------------------------------------------------
#
# The operator does not create a replica's template as it is: for a PyTorchJob with a Master it appends an
# init container to each Worker pod (training-operator v1.9.x, pkg/controller.v1/pytorch/initcontainer.go,
# setInitContainer: only when a Master replica exists and only on rtype worker), rendered from its template
# file (--pytorch-init-container-template-file, default /etc/config/initContainer.yaml) or, when that file
# is absent, from its built-in template, whose container is the one below (image from
# --pytorch-init-container-image, default alpine:3.10, pkg/config/config.go; no securityContext). It also
# appends env (PYTHONUNBUFFERED, MASTER_ADDR/PORT, WORLD_SIZE, RANK, PET_*; pytorch/envvar.go), which no
# Pod Security rule looks at. Volcano and Kueue add no containers.
OPERATOR_INIT_IMAGE_DEFAULT = "alpine:3.10"
OPERATOR_INIT_MAX_TRIES_DEFAULT = 100
_TEMPLATE_FIELD = re.compile(r"\{\{\s*\.(MasterAddr|InitContainerImage|MaxTries)\s*\}\}")


def operator_default_init_container(master_addr: str, image: str, max_tries: int) -> dict[str, Any]:
    """The init container the operator's built-in template gives (v1.9.x initcontainer.go)."""
    return {
        "name": "init-pytorch",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": {
            "limits": {"cpu": "100m", "memory": "20Mi"},
            "requests": {"cpu": "50m", "memory": "10Mi"},
        },
        "command": [
            "sh",
            "-c",
            f"err=1;for i in $(seq {max_tries}); do if nslookup {master_addr}; then err=0 && break; fi;"
            "echo waiting for master; sleep 2; done; exit $err",
        ],
    }


def render_operator_init_template(template: str, master_addr: str, image: str, max_tries: int) -> list[dict]:
    """An init-container template file as the operator fills it (Go template fields MasterAddr,
    InitContainerImage, MaxTries; then YAML into a container list). Any other template action is refused,
    since this stand-in implements only field substitution."""
    values = {"MasterAddr": master_addr, "InitContainerImage": image, "MaxTries": str(max_tries)}
    text = _TEMPLATE_FIELD.sub(lambda m: values[m.group(1)], template)
    if "{{" in text:
        raise ValueError("the init-container template uses Go template actions beyond the three fields")
    containers = yaml.safe_load(text)
    if not isinstance(containers, list):
        raise ValueError("the init-container template must be a YAML list of containers")
    return containers


def operator_pods(
    job: dict[str, Any],
    init_template: str | None = None,
    init_image: str = OPERATOR_INIT_IMAGE_DEFAULT,
    max_tries: int = OPERATOR_INIT_MAX_TRIES_DEFAULT,
) -> dict[str, dict[str, Any]]:
    """The PodSpecs the operator creates for a PyTorchJob, by pod name (`<job>-<type>-<index>`), each with
    the containers it injects. `init_template`: the text of the operator's template file (None: the
    built-in one)."""
    name = job["metadata"]["name"]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    master_addr = f"{name}-master-0"
    pods = {}
    for role, replica in replicas.items():
        for index in range(int(replica.get("replicas", 1))):
            pod = copy.deepcopy(replica["template"]["spec"])
            if role == "Worker" and "Master" in replicas:
                if init_template is None:
                    injected = [operator_default_init_container(master_addr, init_image, max_tries)]
                else:
                    injected = render_operator_init_template(
                        init_template, master_addr, init_image, max_tries
                    )
                pod.setdefault("initContainers", []).extend(injected)
            pods[f"{name}-{role.lower()}-{index}"] = pod
    return pods
