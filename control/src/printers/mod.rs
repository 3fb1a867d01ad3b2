//! Server-side `Table` output for `kubectl get`: the apiserver's columns for the built-in kinds,
//! CRD `additionalPrinterColumns`, and NAME/AGE for anything else.

mod cells;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

pub use cells::human_duration;

/// The `includeObject` query parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

struct Col {
    name: &'static str,
    ty: &'static str,
    priority: u8,
    description: &'static str,
}

const fn col(name: &'static str, ty: &'static str, priority: u8, description: &'static str) -> Col {
    Col {
        name,
        ty,
        priority,
        description,
    }
}

const NAME: Col = col("Name", "string", 0, "Name must be unique within a namespace.");
/// The wide columns of every kind with a pod template.
const CONTAINERS: Col = col("Containers", "string", 1, "Names of each container in the template.");
const IMAGES: Col = col(
    "Images",
    "string",
    1,
    "Images referenced by each container in the template.",
);
const AGE: Col = col(
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

fn columns_of(group: &str, kind: &str) -> Vec<Col> {
    match (group, kind) {
        ("", "Pod") => vec![
            NAME,
            col(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            col(
                "IP",
                "string",
                1,
                "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            ),
            col(
                "Node",
                "string",
                1,
                "NodeName is a request to schedule this pod onto a specific node.",
            ),
            col(
                "Nominated Node",
                "string",
                1,
                "nominatedNodeName is set only when this pod preempts other pods on the node.",
            ),
            col(
                "Readiness Gates",
                "string",
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        ("", "Namespace") => vec![NAME, col("Status", "string", 0, "The status of the namespace"), AGE],
        ("", "Service") => vec![
            NAME,
            col("Type", "string", 0, "type determines how the Service is exposed."),
            col("Cluster-IP", "string", 0, "clusterIP is the IP address of the service."),
            col(
                "External-IP",
                "string",
                0,
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            col("Port(s)", "string", 0, "The ports that are exposed by this service."),
            AGE,
            col(
                "Selector",
                "string",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        ("", "Endpoints") => vec![
            NAME,
            col(
                "Endpoints",
                "string",
                0,
                "Endpoints is the list of endpoints in this set.",
            ),
            AGE,
        ],
        ("discovery.k8s.io", "EndpointSlice") => vec![
            NAME,
            col(
                "AddressType",
                "string",
                0,
                "addressType specifies the type of address carried by this EndpointSlice.",
            ),
            col(
                "Ports",
                "string",
                0,
                "ports specifies the list of network ports exposed by each endpoint in this slice.",
            ),
            col(
                "Endpoints",
                "string",
                0,
                "endpoints is a list of unique endpoints in this slice.",
            ),
            AGE,
        ],
        ("", "ConfigMap") => vec![
            NAME,
            col("Data", "string", 0, "Data contains the configuration data."),
            AGE,
        ],
        ("", "Secret") => vec![
            NAME,
            col(
                "Type",
                "string",
                0,
                "Used to facilitate programmatic handling of secret data.",
            ),
            col("Data", "string", 0, "Data contains the secret data."),
            AGE,
        ],
        ("", "Node") => vec![
            NAME,
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            AGE,
            col("Version", "string", 0, "Kubelet Version reported by the node."),
            col("Internal-IP", "string", 1, "List of addresses reachable to the node."),
            col("External-IP", "string", 1, "List of addresses reachable to the node."),
            col(
                "OS-Image",
                "string",
                1,
                "OS Image reported by the node from /etc/os-release.",
            ),
            col("Kernel-Version", "string", 1, "Kernel Version reported by the node."),
            col(
                "Container-Runtime",
                "string",
                1,
                "Container Runtime Version reported by the node.",
            ),
        ],
        ("", "Event") => vec![
            col(
                "Last Seen",
                "string",
                0,
                "The time at which the most recent occurrence of this event was recorded.",
            ),
            col("Type", "string", 0, "Type of this event (Normal, Warning)."),
            col(
                "Reason",
                "string",
                0,
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            col("Object", "string", 0, "The object that this event is about."),
            col(
                "Message",
                "string",
                0,
                "A human-readable description of the status of this operation.",
            ),
        ],
        ("policy", "PodDisruptionBudget") => vec![
            NAME,
            col(
                "Min Available",
                "string",
                0,
                "The minimum number of pods that must be available",
            ),
            col(
                "Max Unavailable",
                "string",
                0,
                "The maximum number of pods that may be unavailable",
            ),
            col(
                "Allowed Disruptions",
                "integer",
                0,
                "Calculated number of pods that may be disrupted at this time",
            ),
            AGE,
        ],
        ("", "ResourceQuota") => vec![
            NAME,
            AGE,
            col(
                "Request",
                "string",
                0,
                "what the namespace uses of each limit that is not a limits.* one",
            ),
            col("Limit", "string", 0, "what the namespace uses of each limits.* one"),
        ],
        ("autoscaling", "HorizontalPodAutoscaler") => vec![
            NAME,
            col("Reference", "string", 0, "reference to the object scaled"),
            col("Targets", "string", 0, "the metrics and their targets"),
            col("MinPods", "string", 0, "the lower limit of replicas"),
            col("MaxPods", "integer", 0, "the upper limit of replicas"),
            col("Replicas", "integer", 0, "the current number of replicas"),
            AGE,
        ],
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => vec![
            NAME,
            col(
                "Created At",
                "date",
                0,
                "CreationTimestamp is a timestamp representing the server time when this object was created.",
            ),
        ],
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => vec![
            NAME,
            col(
                "Role",
                "string",
                0,
                "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace.",
            ),
            AGE,
            col("Users", "string", 1, "Users in the binding"),
            col("Groups", "string", 1, "Groups in the binding"),
            col("ServiceAccounts", "string", 1, "ServiceAccounts in the binding"),
        ],
        ("", "ServiceAccount") => vec![
            NAME,
            col(
                "Secrets",
                "string",
                0,
                "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
            ),
            AGE,
        ],
        ("batch", "Job") => vec![
            NAME,
            col("Status", "string", 0, "Status of the job."),
            col(
                "Completions",
                "string",
                0,
                "The desired number of successfully finished pods the job should be run with.",
            ),
            col("Duration", "string", 0, "Time required to complete the job."),
            AGE,
            CONTAINERS,
            IMAGES,
            col(
                "Selector",
                "string",
                1,
                "A label query over pods that should match the pod count.",
            ),
        ],
        ("batch", "CronJob") => vec![
            NAME,
            col(
                "Schedule",
                "string",
                0,
                "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
            ),
            col(
                "Timezone",
                "string",
                0,
                "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones.",
            ),
            col(
                "Suspend",
                "boolean",
                0,
                "This flag tells the controller to suspend subsequent executions.",
            ),
            col("Active", "integer", 0, "A list of pointers to currently running jobs."),
            col(
                "Last Schedule",
                "string",
                0,
                "Information when was the last time the job was successfully scheduled.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            col(
                "Selector",
                "string",
                1,
                "A label query over pods that should match the pod count.",
            ),
        ],
        ("apps", "Deployment") => vec![
            NAME,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col(
                "Up-to-date",
                "string",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            col(
                "Available",
                "string",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            col(
                "Selector",
                "string",
                1,
                "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
            ),
        ],
        ("", "PersistentVolume") => vec![
            NAME,
            col(
                "Capacity",
                "string",
                0,
                "capacity is the description of the persistent volume's resources and capacity.",
            ),
            col(
                "Access Modes",
                "string",
                0,
                "accessModes contains all ways the volume can be mounted.",
            ),
            col(
                "Reclaim Policy",
                "string",
                0,
                "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim.",
            ),
            col(
                "Status",
                "string",
                0,
                "phase indicates if a volume is available, bound to a claim, or released by a claim.",
            ),
            col(
                "Claim",
                "string",
                0,
                "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim.",
            ),
            col(
                "StorageClass",
                "string",
                0,
                "storageClassName is the name of StorageClass to which this persistent volume belongs.",
            ),
            col(
                "VolumeAttributesClass",
                "string",
                0,
                "Name of VolumeAttributesClass to which this persistent volume belongs.",
            ),
            col(
                "Reason",
                "string",
                0,
                "reason is a brief CamelCase string that describes any failure.",
            ),
            AGE,
            col(
                "VolumeMode",
                "string",
                1,
                "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state.",
            ),
        ],
        ("", "PersistentVolumeClaim") => vec![
            NAME,
            col(
                "Status",
                "string",
                0,
                "phase represents the current phase of PersistentVolumeClaim.",
            ),
            col(
                "Volume",
                "string",
                0,
                "volumeName is the binding reference to the PersistentVolume backing this claim.",
            ),
            col(
                "Capacity",
                "string",
                0,
                "capacity represents the actual resources of the underlying volume.",
            ),
            col(
                "Access Modes",
                "string",
                0,
                "accessModes contains the actual access modes the volume backing the PVC has.",
            ),
            col(
                "StorageClass",
                "string",
                0,
                "storageClassName is the name of the StorageClass required by the claim.",
            ),
            col(
                "VolumeAttributesClass",
                "string",
                0,
                "volumeAttributesClassName may be used to set the VolumeAttributesClass used by this claim.",
            ),
            AGE,
            col(
                "VolumeMode",
                "string",
                1,
                "volumeMode defines what type of volume is required by the claim.",
            ),
        ],
        ("storage.k8s.io", "StorageClass") => vec![
            NAME,
            col(
                "Provisioner",
                "string",
                0,
                "provisioner indicates the type of the provisioner.",
            ),
            col(
                "ReclaimPolicy",
                "string",
                0,
                "reclaimPolicy controls the reclaimPolicy for dynamically provisioned PersistentVolumes of this storage class.",
            ),
            col(
                "VolumeBindingMode",
                "string",
                0,
                "volumeBindingMode indicates how PersistentVolumeClaims should be provisioned and bound.",
            ),
            col(
                "AllowVolumeExpansion",
                "string",
                0,
                "allowVolumeExpansion shows whether the storage class allow volume expand.",
            ),
            AGE,
        ],
        ("storage.k8s.io", "CSIDriver") => vec![
            NAME,
            col(
                "AttachRequired",
                "boolean",
                0,
                "attachRequired indicates this CSI volume driver requires an attach operation.",
            ),
            col(
                "PodInfoOnMount",
                "boolean",
                0,
                "podInfoOnMount indicates this CSI volume driver requires additional pod information during mount operations.",
            ),
            col(
                "StorageCapacity",
                "boolean",
                0,
                "storageCapacity indicates that the CSI volume driver wants pod scheduling to consider the storage capacity.",
            ),
            col(
                "TokenRequests",
                "string",
                0,
                "tokenRequests indicates the CSI driver needs pods' service account tokens it is mounting volume for to do necessary authentication.",
            ),
            col(
                "RequiresRepublish",
                "boolean",
                0,
                "requiresRepublish indicates the CSI driver wants NodePublishVolume being periodically called.",
            ),
            col(
                "Modes",
                "string",
                0,
                "volumeLifecycleModes defines what kind of volumes this CSI volume driver supports.",
            ),
            AGE,
        ],
        ("storage.k8s.io", "CSINode") => vec![
            NAME,
            col(
                "Drivers",
                "integer",
                0,
                "drivers is a list of information of all CSI Drivers existing on a node.",
            ),
            AGE,
        ],
        ("storage.k8s.io", "VolumeAttachment") => vec![
            NAME,
            col(
                "Attacher",
                "string",
                0,
                "attacher indicates the name of the volume driver that MUST handle this request.",
            ),
            col(
                "PV",
                "string",
                0,
                "persistentVolumeName represents the name of the persistent volume to attach.",
            ),
            col(
                "Node",
                "string",
                0,
                "nodeName represents the node that the volume should be attached to.",
            ),
            col(
                "Attached",
                "boolean",
                0,
                "attached indicates the volume is successfully attached.",
            ),
            AGE,
        ],
        ("apps", "StatefulSet") => vec![
            NAME,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            AGE,
            CONTAINERS,
            IMAGES,
        ],
        ("apps", "ControllerRevision") => vec![
            NAME,
            col("Controller", "string", 0, "Controller of the object"),
            col("Revision", "string", 0, "Revision of the ControllerRevision"),
            AGE,
        ],
        ("apps", "ReplicaSet") | ("", "ReplicationController") => vec![
            NAME,
            col("Desired", "integer", 0, "Replicas is the number of desired replicas."),
            col(
                "Current",
                "integer",
                0,
                "Replicas is the most recently observed number of replicas.",
            ),
            col(
                "Ready",
                "integer",
                0,
                "The number of ready replicas for this replica set.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            col(
                "Selector",
                "string",
                1,
                "Selector is a label query over pods that should match the replica count.",
            ),
        ],
        ("networking.k8s.io", "Ingress") => vec![
            NAME,
            col(
                "Class",
                "string",
                0,
                "ingressClassName is the name of an IngressClass cluster resource.",
            ),
            col(
                "Hosts",
                "string",
                0,
                "Hosts that incoming requests are matched against before the ingress rule",
            ),
            col(
                "Address",
                "string",
                0,
                "Address is a list containing ingress points for the load-balancer",
            ),
            col("Ports", "string", 0, "Ports of TLS configurations that open"),
            AGE,
        ],
        ("networking.k8s.io", "IngressClass") => vec![
            NAME,
            col(
                "Controller",
                "string",
                0,
                "Controller that is responsible for handling this class",
            ),
            col(
                "Parameters",
                "string",
                0,
                "A reference to a resource with additional parameters",
            ),
            AGE,
        ],
        ("coordination.k8s.io", "Lease") => vec![NAME, col("Holder", "string", 0, "The holder of the lease"), AGE],
        ("certificates.k8s.io", "CertificateSigningRequest") => vec![
            NAME,
            AGE,
            col("SignerName", "string", 0, "The signer the request is for"),
            col("Requestor", "string", 0, "The user who made the request"),
            col(
                "RequestedDuration",
                "string",
                0,
                "How long the certificate is asked to last",
            ),
            col("Condition", "string", 0, "Approved, Denied, Failed, Issued or Pending"),
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            vec![
                NAME,
                col(
                    "Created At",
                    "date",
                    0,
                    "The time the CustomResourceDefinition was created.",
                ),
            ]
        }
        _ => vec![NAME, AGE],
    }
}

fn column_json(cols: &[Col]) -> Value {
    cols.iter()
        .map(|c| {
            let format = if c.name == "Name" { "name" } else { "" };
            json!({"name": c.name, "type": c.ty, "format": format, "description": c.description, "priority": c.priority})
        })
        .collect()
}

/// The `columnDefinitions` of a kind.
pub fn columns(group: &str, kind: &str) -> Value {
    column_json(&columns_of(group, kind))
}

fn row_object(item: &Value, include: IncludeObject) -> Option<Value> {
    match include {
        IncludeObject::None => None,
        IncludeObject::Object => Some(item.clone()),
        IncludeObject::Metadata => Some(json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": item.get("metadata").cloned().unwrap_or(json!({})),
        })),
    }
}

fn table_of(defs: Value, rows: Vec<Value>, list_meta: Value) -> Value {
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": defs, "rows": rows})
}

fn row(cells: Vec<Value>, item: &Value, include: IncludeObject) -> Value {
    let mut r = json!({"cells": cells});
    if let Some(o) = row_object(item, include) {
        r["object"] = o;
    }
    r
}

/// A Table of built-in objects.
pub fn table(
    group: &str,
    kind: &str,
    items: &[Value],
    include: IncludeObject,
    now: DateTime<Utc>,
    list_meta: Value,
) -> Value {
    let rows = items
        .iter()
        .map(|i| row(cells::cells(group, kind, i, now), i, include))
        .collect();
    table_of(columns(group, kind), rows, list_meta)
}

/// A Table of custom resources with the CRD version's `additionalPrinterColumns`.
pub fn custom_table(
    items: &[Value],
    printer_columns: &Value,
    include: IncludeObject,
    now: DateTime<Utc>,
    list_meta: Value,
) -> Value {
    let extra = printer_columns.as_array().cloned().unwrap_or_default();
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": NAME.description, "priority": 0}),
    ];
    for c in &extra {
        defs.push(json!({
            "name": c.get("name").cloned().unwrap_or(json!("")),
            "type": c.get("type").cloned().unwrap_or(json!("string")),
            "format": c.get("format").cloned().unwrap_or(json!("")),
            "description": c.get("description").cloned().unwrap_or(json!("")),
            "priority": c.get("priority").cloned().unwrap_or(json!(0)),
        }));
    }
    let has_age = extra
        .iter()
        .any(|c| c.get("jsonPath").and_then(Value::as_str) == Some(".metadata.creationTimestamp"));
    if !has_age {
        defs.push(json!({"name": "Age", "type": "date", "format": "", "description": AGE.description, "priority": 0}));
    }
    let rows = items
        .iter()
        .map(|i| {
            let mut cells = vec![json!(cells::name(i))];
            for c in &extra {
                let v = cells::json_path(i, c.get("jsonPath").and_then(Value::as_str).unwrap_or_default());
                let ty = c.get("type").and_then(Value::as_str).unwrap_or("string");
                cells.push(match (ty, v) {
                    ("date", Some(Value::String(t))) => json!(cells::age_of(&t, now)),
                    (_, Some(v)) => v,
                    (_, None) => Value::Null,
                });
            }
            if !has_age {
                cells.push(json!(cells::age(i, now)));
            }
            row(cells, i, include)
        })
        .collect();
    table_of(Value::Array(defs), rows, list_meta)
}
