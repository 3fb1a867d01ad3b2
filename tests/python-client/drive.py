"""The official Kubernetes Python client (PyPI `kubernetes`) against Nodeless.

`python drive.py <kubeconfig>` discovers every resource the server serves and, for each one
that can be created, creates, gets, lists, patches, watches (from the list's resourceVersion,
expecting the patch as MODIFIED) and deletes an object of it through the dynamic client; then
the typed APIs the client's own end-to-end tests use (pods, ReplicationControllers, Jobs,
CronJobs, Deployments, RBAC roles, HPAs, Services, ConfigMaps) deserialise what the server
answers into their models. A served kind without a sample here fails the run, so a kind added
to the server is added here too. Prints `ok <what>` per step and `PASS` last.
"""

import sys
import time
import uuid

from kubernetes import client, config, dynamic, watch
from kubernetes.client.rest import ApiException
from kubernetes.dynamic.exceptions import ForbiddenError, NotFoundError
from kubernetes.dynamic.resource import ResourceList

IMAGE = "nodeless.local/busybox:1"
NS = "py-" + uuid.uuid4().hex[:6]


def container():
    return {"name": "c", "image": IMAGE, "command": ["sleep", "3600"]}


def template(labels):
    return {"metadata": {"labels": labels}, "spec": {"containers": [container()]}}


# A certificate request (CN=python-client, O=python) made once with openssl, base64 as the API
# carries it; its key was thrown away, and its signer is nobody's, so nothing is signed for it.
CSR_REQUEST = (
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURSBSRVFVRVNULS0tLS0KTUlIa01JR0xBZ0VBTUNreEZqQVVCZ05WQkFNTURYQjVkR2h2YmkxamJHbGxiblF4RHpBTkJnTlZCQW9NQm5CNQpkR2h2YmpCWk1CTUdCeXFHU000OUFnRUdDQ3FHU000OUF3RUhBMElBQklmblRJb2lWaFkxSnkyNENWVUNJM20xCjNkWm9VeXhEMmV1TngxU212M2l3eWFGelpWdDUrTEdBYWhRNytVeSt0T3pqZVBITXFDTW5TdE0xdDZEMm1yNmcKQURBS0JnZ3Foa2pPUFFRREFnTklBREJGQWlFQSthMUR3V0pIQU1aYSttM2NFVGEwV3lvK2NVZm01bHNEbGR2OQpnT1ZvTWtnQ0lFeldtcllBMUVRaHhqdEJERHVnWjNaY1dPalcxRFlEc1dmNjdLZXZXT2RpCi0tLS0tRU5EIENFUlRJRklDQVRFIFJFUVVFU1QtLS0tLQo="
)


def sample(group, kind, name):
    """A minimal valid object of each served kind (metadata added by the caller)."""
    sel = {"app": name}
    return {
        ("", "Namespace"): {},
        ("", "Pod"): {"spec": {"containers": [container()]}},
        ("", "Service"): {"spec": {"ports": [{"port": 80}], "selector": sel}},
        ("", "Endpoints"): {"subsets": [{"addresses": [{"ip": "10.9.9.9"}], "ports": [{"port": 80}]}]},
        ("", "ConfigMap"): {"data": {"a": "b"}},
        ("", "Secret"): {"stringData": {"a": "b"}},
        ("", "LimitRange"): {"spec": {"limits": [{"type": "Container", "default": {"cpu": "100m"}}]}},
        ("", "ResourceQuota"): {"spec": {"hard": {"pods": "100"}}},
        ("", "ReplicationController"): {"spec": {"replicas": 0, "selector": sel, "template": template(sel)}},
        ("", "Node"): {"spec": {}},
        ("", "Event"): {
            "involvedObject": {"kind": "Pod", "name": name, "namespace": NS},
            "reason": "Testing",
            "message": "from the Python client",
            "type": "Normal",
        },
        ("", "ServiceAccount"): {},
        ("", "PersistentVolume"): {
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "python-static",
                "csi": {"driver": "example.com/python", "volumeHandle": name},
            }
        },
        ("", "PersistentVolumeClaim"): {
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "python-none",
                "resources": {"requests": {"storage": "1Gi"}},
            }
        },
        ("storage.k8s.io", "StorageClass"): {"provisioner": "example.com/python", "parameters": {"type": "a"}},
        ("storage.k8s.io", "CSIDriver"): {"spec": {"attachRequired": False}},
        ("node.k8s.io", "RuntimeClass"): {"handler": "python"},
        ("storage.k8s.io", "CSINode"): {"spec": {"drivers": [{"name": "example.com/python", "nodeID": name}]}},
        ("storage.k8s.io", "VolumeAttachment"): {
            "spec": {"attacher": "example.com/python", "nodeName": name, "source": {"persistentVolumeName": name}}
        },
        ("apps", "Deployment"): {
            "spec": {"replicas": 0, "selector": {"matchLabels": sel}, "template": template(sel)}
        },
        ("apps", "ReplicaSet"): {
            "spec": {"replicas": 0, "selector": {"matchLabels": sel}, "template": template(sel)}
        },
        ("apps", "DaemonSet"): {"spec": {"selector": {"matchLabels": sel}, "template": template(sel)}},
        ("apps", "StatefulSet"): {
            "spec": {"replicas": 0, "serviceName": name, "selector": {"matchLabels": sel}, "template": template(sel)}
        },
        ("apps", "ControllerRevision"): {"data": {"spec": {"template": template(sel)}}, "revision": 1},
        ("batch", "Job"): {
            "spec": {
                "suspend": True,
                "template": {"spec": {"restartPolicy": "Never", "containers": [container()]}},
            }
        },
        ("batch", "CronJob"): {
            "spec": {
                "schedule": "*/30 * * * *",
                "suspend": True,
                "jobTemplate": {
                    "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container()]}}}
                },
            }
        },
        ("autoscaling", "HorizontalPodAutoscaler"): {
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": 1,
                "maxReplicas": 2,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}},
                    }
                ],
            }
        },
        ("autoscaling.alibabacloud.com", "CronHorizontalPodAutoscaler"): {
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "jobs": [{"name": "nightly", "schedule": "0 0 2 * * *", "targetSize": 1}],
            }
        },
        ("policy", "PodDisruptionBudget"): {"spec": {"minAvailable": 1, "selector": {"matchLabels": sel}}},
        ("networking.k8s.io", "Ingress"): {
            "spec": {
                "rules": [
                    {
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {"service": {"name": name, "port": {"number": 80}}},
                                }
                            ]
                        }
                    }
                ]
            }
        },
        ("networking.k8s.io", "IngressClass"): {"spec": {"controller": "example.com/python"}},
        ("discovery.k8s.io", "EndpointSlice"): {
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.9.9.9"]}],
            "ports": [{"port": 80}],
        },
        ("coordination.k8s.io", "Lease"): {"spec": {"holderIdentity": "python", "leaseDurationSeconds": 10}},
        ("certificates.k8s.io", "CertificateSigningRequest"): {
            "spec": {
                "request": CSR_REQUEST,
                "signerName": "python.example.com/signer",
                "usages": ["digital signature", "client auth"],
            }
        },
        ("rbac.authorization.k8s.io", "ClusterRole"): {
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
        },
        ("rbac.authorization.k8s.io", "Role"): {
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
        },
        ("rbac.authorization.k8s.io", "ClusterRoleBinding"): {
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": NS}],
        },
        ("rbac.authorization.k8s.io", "RoleBinding"): {
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": NS}],
        },
        ("apiextensions.k8s.io", "CustomResourceDefinition"): {
            "spec": {
                "group": "python.example.com",
                "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
                "scope": "Namespaced",
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                ],
            }
        },
        ("network.nodeless.io", "PrivateZone"): {
            "spec": {
                "zone": name + ".python.example",
                "networks": ["10.99.0.0/16"],
                "records": [{"name": "www", "type": "A", "values": [{"value": "10.99.0.1"}]}],
            }
        },
        ("serving.knative.dev", "Service"): {"spec": {"template": {"spec": {"containers": [{"image": IMAGE}]}}}},
        ("serving.knative.dev", "Configuration"): {
            "spec": {"template": {"spec": {"containers": [{"image": IMAGE}]}}}
        },
        ("serving.knative.dev", "Route"): {"spec": {"traffic": [{"configurationName": name, "percent": 100}]}},
        ("serving.knative.dev", "Revision"): {"spec": {"containers": [{"image": IMAGE}]}},
        ("autoscaling.internal.knative.dev", "PodAutoscaler"): {
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "protocolType": "http1",
            }
        },
        ("networking.internal.knative.dev", "Ingress"): {
            "spec": {
                "rules": [
                    {
                        "hosts": [name + ".python.example"],
                        "visibility": "ExternalIP",
                        "http": {
                            "paths": [
                                {
                                    "splits": [
                                        {
                                            "serviceName": name,
                                            "serviceNamespace": NS,
                                            "servicePort": 80,
                                            "percent": 100,
                                        }
                                    ]
                                }
                            ]
                        },
                    }
                ]
            }
        },
    }.get((group, kind))


# Kinds the platform serves but refuses to run, with the words of the refusal.
REFUSED = {("apps", "DaemonSet"): "DaemonSet is not supported"}


def say(what):
    print("ok " + what, flush=True)


def fail(what):
    print("FAIL " + what, flush=True)
    sys.exit(1)


def gone(r, name, ns):
    """Deleted: not found, or going (a namespace empties first)."""
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            obj = r.get(name=name, namespace=ns)
        except NotFoundError:
            return True
        if obj.metadata.deletionTimestamp:
            return True
        time.sleep(0.2)
    return False


def drive_dynamic(dyn):
    resources = [
        r
        for r in dyn.resources.search()
        if not isinstance(r, ResourceList)
        and r.name and "/" not in r.name and r.verbs and "create" in r.verbs and "watch" in r.verbs
    ]
    if len(resources) < 30:
        fail(f"discovery found only {len(resources)} creatable resources")
    for r in sorted(resources, key=lambda r: (r.group, r.kind)):
        what = f"{r.group or 'core'}/{r.api_version} {r.kind}"
        name = "py-" + r.kind.lower()[:20] + "-" + uuid.uuid4().hex[:5]
        if (r.group, r.kind) == ("apiextensions.k8s.io", "CustomResourceDefinition"):
            name = "widgets.python.example.com"
        body = sample(r.group, r.kind, name)
        if body is None:
            fail(f"{what}: served, but this test has no sample of it")
        body = dict(body)
        body["apiVersion"] = r.group_version
        body["kind"] = r.kind
        body["metadata"] = {"name": name, "labels": {"made-by": "python"}}
        ns = NS if r.namespaced else None
        if (r.group, r.kind) in REFUSED:
            try:
                r.create(body=body, namespace=ns)
            except ForbiddenError as e:
                if REFUSED[(r.group, r.kind)] not in str(e.body):
                    fail(f"{what}: refused without its reason: {e.body}")
                say(f"{what} refused with its reason")
                continue
            fail(f"{what}: created, though the platform does not run it")
        made = r.create(body=body, namespace=ns)
        if made.metadata.name != name or not made.metadata.uid:
            fail(f"{what}: create answered {made.metadata}")
        got = r.get(name=name, namespace=ns)
        if got.metadata.uid != made.metadata.uid:
            fail(f"{what}: get answered another object")
        listed = r.get(namespace=ns, label_selector="made-by=python")
        if name not in [i.metadata.name for i in listed.items]:
            fail(f"{what}: list does not hold {name}")
        rv = listed.metadata.resourceVersion
        patched = r.patch(
            body={"metadata": {"labels": {"patched": "yes"}}},
            name=name,
            namespace=ns,
            content_type="application/merge-patch+json",
        )
        if patched.metadata.labels["patched"] != "yes":
            fail(f"{what}: patch did not take")
        seen = False
        for ev in r.watch(namespace=ns, resource_version=rv, timeout=10):
            o = ev["object"]
            if ev["type"] == "MODIFIED" and o.metadata.name == name and (o.metadata.labels or {}).get("patched"):
                seen = True
                break
        if not seen:
            fail(f"{what}: the watch from {rv} did not show the patch")
        r.delete(name=name, namespace=ns)
        if not gone(r, name, ns):
            fail(f"{what}: still there after delete")
        say(f"{what} create get list patch watch delete")


def drive_typed(api_client):
    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    batch = client.BatchV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)
    hpa = client.AutoscalingV2Api(api_client)
    labels = {"app": "typed"}
    pod_spec = client.V1PodSpec(
        containers=[client.V1Container(name="c", image=IMAGE, command=["sleep", "3600"])]
    )

    pod = core.create_namespaced_pod(NS, client.V1Pod(metadata=client.V1ObjectMeta(name="typed"), spec=pod_spec))
    pods = core.list_namespaced_pod(NS)
    if "typed" not in [p.metadata.name for p in pods.items]:
        fail("typed pod list")
    core.patch_namespaced_pod("typed", NS, {"metadata": {"labels": {"patched": "yes"}}})
    w = watch.Watch()
    seen = [
        e["type"]
        for e in w.stream(core.list_namespaced_pod, NS, resource_version=pods.metadata.resource_version, timeout_seconds=5)
        if e["object"].metadata.name == "typed"
    ]
    if "MODIFIED" not in seen:
        fail(f"typed pod watch saw {seen}")
    core.delete_namespaced_pod("typed", NS, grace_period_seconds=0)
    say(f"typed pod {pod.metadata.uid} create list patch watch delete")

    rc = client.V1ReplicationController(
        metadata=client.V1ObjectMeta(name="typed-rc"),
        spec=client.V1ReplicationControllerSpec(
            replicas=0,
            selector=labels,
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=pod_spec),
        ),
    )
    core.create_namespaced_replication_controller(NS, rc)
    core.patch_namespaced_replication_controller_scale("typed-rc", NS, {"spec": {"replicas": 0}})
    got = core.read_namespaced_replication_controller("typed-rc", NS)
    core.delete_namespaced_replication_controller("typed-rc", NS)
    say(f"typed replicationcontroller {got.metadata.name}")

    job = batch.create_namespaced_job(
        NS,
        client.V1Job(
            metadata=client.V1ObjectMeta(name="typed-job"),
            spec=client.V1JobSpec(
                suspend=True,
                template=client.V1PodTemplateSpec(
                    spec=client.V1PodSpec(restart_policy="Never", containers=pod_spec.containers)
                ),
            ),
        ),
    )
    batch.read_namespaced_job_status("typed-job", NS)
    batch.delete_namespaced_job("typed-job", NS, propagation_policy="Background")
    cron = batch.create_namespaced_cron_job(
        NS,
        client.V1CronJob(
            metadata=client.V1ObjectMeta(name="typed-cron"),
            spec=client.V1CronJobSpec(
                schedule="0 * * * *",
                suspend=True,
                job_template=client.V1JobTemplateSpec(
                    spec=client.V1JobSpec(
                        template=client.V1PodTemplateSpec(
                            spec=client.V1PodSpec(restart_policy="Never", containers=pod_spec.containers)
                        )
                    )
                ),
            ),
        ),
    )
    batch.delete_namespaced_cron_job("typed-cron", NS)
    say(f"typed job {job.metadata.name} and cronjob {cron.metadata.name}")

    dep = apps.create_namespaced_deployment(
        NS,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="typed-dep"),
            spec=client.V1DeploymentSpec(
                replicas=0,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=pod_spec),
            ),
        ),
    )
    scale = apps.read_namespaced_deployment_scale("typed-dep", NS)
    h = hpa.create_namespaced_horizontal_pod_autoscaler(
        NS,
        client.V2HorizontalPodAutoscaler(
            metadata=client.V1ObjectMeta(name="typed-hpa"),
            spec=client.V2HorizontalPodAutoscalerSpec(
                scale_target_ref=client.V2CrossVersionObjectReference(
                    api_version="apps/v1", kind="Deployment", name="typed-dep"
                ),
                min_replicas=1,
                max_replicas=3,
            ),
        ),
    )
    hpa.delete_namespaced_horizontal_pod_autoscaler("typed-hpa", NS)
    apps.delete_namespaced_deployment("typed-dep", NS)
    say(f"typed deployment {dep.metadata.name} (scale {scale.spec.replicas}) and hpa {h.metadata.name}")

    role = rbac.create_namespaced_role(
        NS,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="typed-role"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        NS,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="typed-rb"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="typed-role"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="default", namespace=NS)],
        ),
    )
    roles = rbac.list_namespaced_role(NS)
    if "typed-role" not in [r.metadata.name for r in roles.items]:
        fail("typed role list")
    rbac.delete_namespaced_role_binding("typed-rb", NS)
    rbac.delete_namespaced_role("typed-role", NS)
    say(f"typed role {role.metadata.name} and binding")

    svc = core.create_namespaced_service(
        NS,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="typed-svc"),
            spec=client.V1ServiceSpec(selector=labels, ports=[client.V1ServicePort(port=80)]),
        ),
    )
    if not svc.spec.cluster_ip:
        fail("typed service has no cluster IP")
    core.delete_namespaced_service("typed-svc", NS)
    cm = core.create_namespaced_config_map(
        NS, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="typed-cm"), data={"k": "v"})
    )
    core.replace_namespaced_config_map(
        "typed-cm", NS, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="typed-cm"), data={"k": "w"})
    )
    if core.read_namespaced_config_map("typed-cm", NS).data["k"] != "w":
        fail("typed configmap replace")
    core.delete_namespaced_config_map("typed-cm", NS)
    say(f"typed service {svc.spec.cluster_ip} and configmap {cm.metadata.name}")

    try:
        core.read_namespaced_pod("no-such-pod", NS)
        fail("a missing pod was found")
    except ApiException as e:
        if e.status != 404:
            fail(f"a missing pod answered {e.status}")
    say("not found is 404")


def main():
    config.load_kube_config(config_file=sys.argv[1])
    api_client = client.ApiClient()
    client.CoreV1Api(api_client).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    dyn = dynamic.DynamicClient(api_client)
    drive_dynamic(dyn)
    drive_typed(api_client)
    client.CoreV1Api(api_client).delete_namespace(NS)
    print("PASS", flush=True)


if __name__ == "__main__":
    main()
