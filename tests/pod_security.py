"""A checker for the `restricted` Pod Security Standard, written from its documented rules.

Source: https://kubernetes.io/docs/concepts/security/pod-security-standards/ (the Baseline and Restricted
policy tables). checkov cannot read a PyTorchJob (a custom resource), so the job's pod templates are checked
here, with the same rules for every other pod template the project ships. Each rule below names the
control of that page it implements; `restricted_violations` returns [] when a pod spec passes them all.
"""

from __future__ import annotations

from typing import Any

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
