{{/*
Names, labels and the pieces every component shares.

Component helpers take a dict: {"root": $, "name": "rules-api", "key": "rulesApi"}
(`name` is the component as `smarttasks run` knows it, `key` its section in values).
*/}}

{{- define "smarttasks.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "smarttasks.fullname" -}}
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

{{/* `<fullname>-<suffix>`, shortening the full name so that the whole fits 63 characters. */}}
{{- define "smarttasks.prefixed" -}}
{{- $room := int (sub 62 (len .suffix)) }}
{{- printf "%s-%s" (include "smarttasks.fullname" .root | trunc $room | trimSuffix "-") .suffix }}
{{- end }}

{{- define "smarttasks.componentName" -}}
{{- include "smarttasks.prefixed" (dict "root" .root "suffix" .name) }}
{{- end }}

{{- define "smarttasks.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; pass the root context. */}}
{{- define "smarttasks.labels" -}}
helm.sh/chart: {{ include "smarttasks.chart" . }}
app.kubernetes.io/name: {{ include "smarttasks.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: smarttasks
{{- with .Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of a component's objects; pass {"root", "name"}. */}}
{{- define "smarttasks.componentLabels" -}}
{{ include "smarttasks.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/* The immutable selector of a component's pods; pass {"root", "name"}. */}}
{{- define "smarttasks.selectorLabels" -}}
app.kubernetes.io/name: {{ include "smarttasks.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "smarttasks.serviceAccountName" -}}
{{- $c := index .root.Values .key }}
{{- if $c.serviceAccount.create }}
{{- default (include "smarttasks.componentName" .) $c.serviceAccount.name }}
{{- else }}
{{- default "default" $c.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "smarttasks.image" -}}
{{- $image := .Values.image }}
{{- $repository := $image.repository }}
{{- if $image.registry }}
{{- $repository = printf "%s/%s" $image.registry $image.repository }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s@%s" $repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion $image.tag | toString) }}
{{- end }}
{{- end }}

{{/* In-cluster base URL of a component's Service; pass {"root", "name", "key"}. */}}
{{- define "smarttasks.serviceUrl" -}}
{{- $c := index .root.Values .key }}
{{- printf "http://%s.%s.svc:%v" (include "smarttasks.componentName" .) .root.Release.Namespace $c.service.port }}
{{- end }}

{{- define "smarttasks.jwksUrl" -}}
{{- include "smarttasks.serviceUrl" (dict "root" . "name" "users" "key" "users") }}/.well-known/jwks.json
{{- end }}

{{- define "smarttasks.peeringName" -}}
{{- default (include "smarttasks.fullname" .) .Values.operator.peering.name }}
{{- end }}

{{/*
Secrets: the name and key holding each connection setting. A URL given in values lives
in a Secret the chart creates; an existing Secret is used as it is. Required ones fail
the render with a message saying what to set.
*/}}
{{- define "smarttasks.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- $_ := required "database.url or database.existingSecret is required: the PostgreSQL every service stores its schema in (see docs/deploy.md)" .Values.database.url }}
{{- include "smarttasks.prefixed" (dict "root" . "suffix" "database") }}
{{- end }}
{{- end }}

{{- define "smarttasks.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}database-url{{ end }}
{{- end }}

{{- define "smarttasks.amqpSecretName" -}}
{{- if .Values.amqp.existingSecret }}
{{- .Values.amqp.existingSecret }}
{{- else }}
{{- $_ := required "amqp.url or amqp.existingSecret is required: the RabbitMQ that carries task events and notification requests (see docs/deploy.md)" .Values.amqp.url }}
{{- include "smarttasks.prefixed" (dict "root" . "suffix" "amqp") }}
{{- end }}
{{- end }}

{{- define "smarttasks.amqpSecretKey" -}}
{{- if .Values.amqp.existingSecret }}{{ .Values.amqp.existingSecretKey }}{{ else }}amqp-url{{ end }}
{{- end }}

{{- define "smarttasks.jwtSecretName" -}}
{{- $key := .Values.jwt.signingKey }}
{{- if $key.existingSecret }}
{{- $key.existingSecret }}
{{- else if or $key.pem $key.generate }}
{{- include "smarttasks.prefixed" (dict "root" . "suffix" "jwt") }}
{{- else }}
{{- fail "jwt.signingKey: set existingSecret (or pem), or generate: true; the users service needs the EC P-256 key that signs access tokens" }}
{{- end }}
{{- end }}

{{- define "smarttasks.jwtSecretKey" -}}
{{- if .Values.jwt.signingKey.existingSecret }}{{ .Values.jwt.signingKey.existingSecretKey }}{{ else }}signing-key.pem{{ end }}
{{- end }}

{{- define "smarttasks.serviceTokenSecretName" -}}
{{- $token := .Values.serviceToken }}
{{- if $token.existingSecret }}
{{- $token.existingSecret }}
{{- else if $token.generate }}
{{- include "smarttasks.prefixed" (dict "root" . "suffix" "service-token") }}
{{- else }}
{{- fail "serviceToken: set existingSecret, or generate: true; the notifications service needs the token the users service accepts to look up owner and assignee addresses" }}
{{- end }}
{{- end }}

{{- define "smarttasks.serviceTokenSecretKey" -}}
{{- if .Values.serviceToken.existingSecret }}{{ .Values.serviceToken.existingSecretKey }}{{ else }}service-token{{ end }}
{{- end }}

{{/*
The service token as a file: the volume and its mount, for users (which accepts it) and
notifications (which presents it). A mounted Secret is updated in place when the Secret
changes (an env value would need a restart), so notifications follows a rotation.
*/}}
{{- define "smarttasks.serviceTokenPath" -}}
/etc/smarttasks/service-token/service-token
{{- end }}

{{- define "smarttasks.serviceTokenVolume" -}}
- name: service-token
  secret:
    secretName: {{ include "smarttasks.serviceTokenSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ include "smarttasks.serviceTokenSecretKey" . }}
        path: service-token
{{- end }}

{{- define "smarttasks.serviceTokenMount" -}}
- name: service-token
  mountPath: /etc/smarttasks/service-token
  readOnly: true
{{- end }}

{{/* An env entry reading one key of a Secret; pass {"env", "secret", "key"}. */}}
{{- define "smarttasks.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end }}

{{/* Settings every component reads. */}}
{{- define "smarttasks.commonEnv" -}}
- name: SMARTTASKS_ENVIRONMENT
  value: {{ .Values.environment | quote }}
- name: SMARTTASKS_LOG_LEVEL
  value: {{ .Values.logging.level | quote }}
- name: SMARTTASKS_LOG_JSON
  value: {{ .Values.logging.json | quote }}
- name: SMARTTASKS_JWT_ISSUER
  value: {{ .Values.jwt.issuer | quote }}
- name: SMARTTASKS_JWT_AUDIENCE
  value: {{ .Values.jwt.audience | quote }}
- name: SMARTTASKS_JWKS_URL
  value: {{ include "smarttasks.jwksUrl" . | quote }}
- name: TMPDIR
  value: /tmp
- name: HOME
  value: /tmp
{{- end }}

{{- define "smarttasks.databaseEnv" -}}
{{ include "smarttasks.secretEnv" (dict "env" "SMARTTASKS_DATABASE_URL" "secret" (include "smarttasks.databaseSecretName" .) "key" (include "smarttasks.databaseSecretKey" .)) }}
- name: SMARTTASKS_DATABASE_POOL_SIZE
  value: {{ .Values.database.poolSize | quote }}
{{- end }}

{{- define "smarttasks.amqpEnv" -}}
{{ include "smarttasks.secretEnv" (dict "env" "SMARTTASKS_AMQP_URL" "secret" (include "smarttasks.amqpSecretName" .) "key" (include "smarttasks.amqpSecretKey" .)) }}
{{- end }}

{{/* The writable /tmp every pod gets (the root filesystem is read-only). */}}
{{- define "smarttasks.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpDir.sizeLimit }}
{{- end }}

{{- define "smarttasks.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Rules granting `get` on Secrets, used by the operator and notifications roles. */}}
{{- define "smarttasks.secretReadRule" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}

{{/*
Roles and bindings letting a component's ServiceAccount `get` Secrets in each namespace
of rbac.secretNamespaces; pass {"root", "name", "key"}. (With no namespaces listed, the
component's ClusterRole carries the rule instead.)
*/}}
{{- define "smarttasks.secretReaderRoles" -}}
{{- $root := .root }}
{{- $name := include "smarttasks.componentName" . }}
{{- $labels := include "smarttasks.componentLabels" . }}
{{- $sa := include "smarttasks.serviceAccountName" . }}
{{- range $root.Values.rbac.secretNamespaces }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $name }}-secrets
  namespace: {{ . }}
  labels:
    {{- $labels | nindent 4 }}
rules:
  {{- include "smarttasks.secretReadRule" $root | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $name }}-secrets
  namespace: {{ . }}
  labels:
    {{- $labels | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $name }}-secrets
subjects:
  - kind: ServiceAccount
    name: {{ $sa }}
    namespace: {{ $root.Release.Namespace }}
{{- end }}
{{- end }}

{{/* The operator's rules; pass the peering resource (clusterkopfpeerings or kopfpeerings). */}}
{{- define "smarttasks.operatorRules" -}}
# Its view of the rules (kopf's listing and watch), its finalizer and annotations.
- apiGroups: ["smarttasks.io"]
  resources: ["automationrules"]
  verbs: ["list", "watch", "patch"]
# Ready, observedGeneration, firedCount, lastFiredAt.
- apiGroups: ["smarttasks.io"]
  resources: ["automationrules/status"]
  verbs: ["patch"]
# A Warning Event on a rule that does not compile (kubectl describe).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# Its peering record.
- apiGroups: ["kopf.dev"]
  resources: [{{ . | quote }}]
  verbs: ["list", "watch", "patch"]
{{- end }}
