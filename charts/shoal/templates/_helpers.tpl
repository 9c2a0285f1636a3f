{{/* The chart's name, or nameOverride. */}}
{{- define "shoal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* fullnameOverride, else the release name (plus the chart's name unless it has it). */}}
{{- define "shoal.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "shoal.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "shoal.labels" -}}
{{ include "shoal.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "shoal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "shoal.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* What the operator does in a namespace it serves: no more. */}}
{{- define "shoal.namespacedRules" -}}
# kopf watches what it serves and patches its finalizer and state annotations.
- apiGroups: [shoal.dev]
  resources: [workerpools, workflows]
  verbs: [list, watch, patch]
# A pool read by name: its status before a patch, a Workflow's pool.
- apiGroups: [shoal.dev]
  resources: [workerpools]
  verbs: [get]
- apiGroups: [shoal.dev]
  resources: [workerpools/status, workflows/status]
  verbs: [patch]
# Auto mode: the scaler's count mirrored into spec.replicas through /scale.
- apiGroups: [shoal.dev]
  resources: [workerpools/scale]
  verbs: [patch]
# Owner references with blockOwnerDeletion on the pool's Deployment.
- apiGroups: [shoal.dev]
  resources: [workerpools/finalizers]
  verbs: [update]
# Server-side apply (patch; create when the Deployment is new), the scaler's
# reads and replica patches, kopf's watch for drift.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
# Pool pods: deletion cost (idle pods first) before a scale-down; the watch of
# OOM kills, and the annotation recording those acted on.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, patch]
# The DSN of each pool's database Secret; never listed or watched.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# kopf posts core/v1 Events.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
