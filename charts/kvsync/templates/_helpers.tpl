{{/* Chart name, overridable. */}}
{{- define "kvsync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the release's objects: the release name, plus the chart name unless it already contains it. */}}
{{- define "kvsync.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kvsync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvsync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kvsync.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kvsync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kvsync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kvsync.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The leader-election Lease (in the release namespace). */}}
{{- define "kvsync.leaseName" -}}
{{- default (include "kvsync.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{/*
Rules the operator needs in every namespace it acts in (bound cluster-wide in
cluster mode, per watched namespace in namespaced mode).
*/}}
{{- define "kvsync.workloadRules" -}}
# Its own resource; status is written only when it changes. Patch: the
# kvsync.io/merge-cleanup finalizer on creationPolicy Merge objects.
- apiGroups: [kvsync.io]
  resources: [keyvaultsecrets]
  verbs: [get, list, watch, patch]
- apiGroups: [kvsync.io]
  resources: [keyvaultsecrets/status]
  verbs: [patch]
# The Secrets kvsync creates carry an ownerReference to their KeyVaultSecret
# with blockOwnerDeletion: with the OwnerReferencesPermissionEnforcement
# admission plugin (OpenShift has it on) that takes update on the owner's
# finalizers subresource.
- apiGroups: [kvsync.io]
  resources: [keyvaultsecrets/finalizers]
  verbs: [update]
# Target Secrets (written by server-side apply: patch, plus create when the
# apply creates one; delete: only a Secret kvsync created for the
# KeyVaultSecret, by its ownership record and marks, when its target.name
# changed or deletionPolicy Delete says so), client-secret/certificate
# credentials referenced from a
# KeyVaultSecret, and the reload stage's watch of Secrets.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch, delete]
# Templates held in ConfigMaps (target.template.templateFrom), watched so
# that editing one re-renders the Secrets that use it.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch]
# Workload Identity: read the ServiceAccount's client/tenant annotations
# (watched, so that annotating it fixes a KeyVaultSecret at once) and
# request a token for it to exchange with Entra ID.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [serviceaccounts/token]
  verbs: [create]
# Reload stage: ConfigMaps referenced by workloads (Reloader compatibility).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch]
# Reload stage: rolling restarts are patches of the pod template.
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets]
  verbs: [get, list, watch, patch]
# Reload stage: a CronJob gets a Job from its jobTemplate (the CronJob keeps
# kvsync's record); Argo Rollouts, watched when their CRD is installed.
- apiGroups: [batch]
  resources: [cronjobs]
  verbs: [get, list, watch, patch]
# The Job's ownerReference to its CronJob blocks the CronJob's deletion
# (OwnerReferencesPermissionEnforcement, as above).
- apiGroups: [batch]
  resources: [cronjobs/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create]
- apiGroups: [argoproj.io]
  resources: [rollouts]
  verbs: [get, list, watch, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
