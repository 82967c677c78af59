{{/*
Names, labels and the RBAC rule sets shared by several templates.
*/}}

{{/* Chart name, overridable. */}}
{{- define "homeostat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name for objects: "<release>-homeostat", or the release name alone when it already
contains the chart name. Truncated to 63 characters (the DNS label limit).
*/}}
{{- define "homeostat.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "homeostat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods; never change them (Deployment selectors are immutable). */}}
{{- define "homeostat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "homeostat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object the chart renders. */}}
{{- define "homeostat.labels" -}}
helm.sh/chart: {{ include "homeostat.chart" . }}
{{ include "homeostat.selectorLabels" . }}
app.kubernetes.io/version: {{ (.Values.image.tag | default .Chart.AppVersion) | toString | trunc 63 | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: homeostat
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "homeostat.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "homeostat.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Container image reference. */}}
{{- define "homeostat.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/*
The kopf peering name, or "" for standalone: the explicit value, else the full name when more
than one replica runs (two standalone operators would process every event twice).
*/}}
{{- define "homeostat.peeringName" -}}
{{- if .Values.peering.name }}
{{- .Values.peering.name }}
{{- else if gt (int .Values.replicas) 1 }}
{{- include "homeostat.fullname" . }}
{{- end }}
{{- end }}

{{/*
Validates watchNamespaces: exact names only, because a Role and a RoleBinding are created in each
entry and RBAC has no notion of a namespace pattern.
*/}}
{{- define "homeostat.validate" -}}
{{- range .Values.watchNamespaces }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" (toString .)) }}
{{- fail (printf "watchNamespaces: %q is not a namespace name; globs are not supported (leave watchNamespaces empty to watch every namespace)" (toString .)) }}
{{- end }}
{{- end }}
{{- if and (gt (int .Values.replicas) 1) (not (toString .Values.peering.priority | empty)) }}
{{- fail "peering.priority must be empty when replicas > 1: every pod would get the same priority and kopf pauses all operators of equal priority" }}
{{- end }}
{{- end }}

{{/*
RBAC rules on namespaced resources. Cluster-wide mode puts them in the ClusterRole; namespaced
mode puts them in one Role per watched namespace. The chart README maps each rule to the code
that needs it; tests/unit/test_rbac_audit.py pins the exact set. Arguments: (dict "root" $
"namespaced" bool).
*/}}
{{- define "homeostat.rules.namespaced" -}}
{{- $root := .root -}}
# ReplicatedService: kopf lists/watches it; healing reads it and patches the template (a raised
# memory limit) and the rollout-command annotation (a rollback). The operator never PUTs
# anything, so no rule grants `update`.
- apiGroups: ["homeostat.dev"]
  resources: ["replicatedservices"]
  verbs: ["get", "list", "watch", "patch"]
# Status reports (conditions, phase, ready replicas), merge patches only.
- apiGroups: ["homeostat.dev"]
  resources: ["replicatedservices/status"]
  verbs: ["patch"]
# The scale subresource, written by the autoscaler and by healing's ScaleUp like `kubectl scale`.
- apiGroups: ["homeostat.dev"]
  resources: ["replicatedservices/scale"]
  verbs: ["patch"]
# Approvals: the operator opens them, watches them and records decisions in their status.
- apiGroups: ["homeostat.dev"]
  resources: ["approvals"]
  verbs: ["get", "list", "watch", "create"]
- apiGroups: ["homeostat.dev"]
  resources: ["approvals/status"]
  verbs: ["patch"]
# Children: Deployment, Service, PodDisruptionBudget (server-side apply = create + patch).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# ControllerRevisions keep the pod template of every revision, so a rollout can run the
# stable revision again after the spec moved on.
- apiGroups: ["apps"]
  resources: ["controllerrevisions"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Healing: watch pods, delete crash-looping ones, evict (PDB-respecting) from failing nodes.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: [""]
  resources: ["pods/eviction"]
  verbs: ["create"]
# Events on ReplicatedServices and Approvals (kopf.event, kopf's handler events, the approval
# audit trail): always created, never patched.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# Canary traffic weights with Gateway API: the named HTTPRoute is read and JSON-patched.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "patch"]
{{- if and .namespaced (include "homeostat.peeringName" $root) }}
# kopf peering keep-alives of a namespaced operator.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}

{{/*
RBAC rules on cluster-scoped resources, which only a ClusterRole can grant; present in both modes.
Arguments: (dict "root" $ "namespaced" bool).
*/}}
{{- define "homeostat.rules.clusterScoped" -}}
{{- $root := .root -}}
# kopf discovers resources by watching CRDs.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- if .namespaced }}
# A namespaced kopf lists and watches namespaces to learn which watched ones exist (a cluster-wide
# kopf watches across all namespaces and never lists them).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}
# RemediationPolicies are cluster-scoped (ADR 0010) and read-only to the operator
# (handlers/healing.py indexes them).
- apiGroups: ["homeostat.dev"]
  resources: ["remediationpolicies"]
  verbs: ["get", "list", "watch"]
# Node healing: read node conditions, cordon (spec.unschedulable) a failing node.
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch", "patch"]
{{- if and .namespaced $root.Values.healing.drainAllNamespaces }}
# Node drains of a namespaced install (healing.drainAllNamespaces): list the pods on the node in
# every namespace and evict them through the Eviction API, which honours PodDisruptionBudgets.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["pods/eviction"]
  verbs: ["create"]
{{- end }}
{{- if and (not .namespaced) (include "homeostat.peeringName" $root) }}
# kopf peering keep-alives of a cluster-wide operator.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}
