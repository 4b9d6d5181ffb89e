{{/*
The objects every component has, parameterised by {"root": $, "name": ..., "key": ...}:
Deployment, Service, ServiceAccount, and for the stateless HTTP services an HPA and a
PodDisruptionBudget. The `<component>-<kind>.yaml` templates call these.
*/}}

{{/* Environment of each component beyond smarttasks.commonEnv. */}}
{{- define "smarttasks.env.users" -}}
{{ include "smarttasks.databaseEnv" .root }}
- name: SMARTTASKS_SIGNING_KEY_FILE
  value: /etc/smarttasks/jwt/signing-key.pem
- name: SMARTTASKS_SERVICE_TOKEN_FILE
  value: {{ include "smarttasks.serviceTokenPath" .root | quote }}
{{- $redis := .root.Values.redis }}
{{- if or $redis.url $redis.existingSecret }}
{{ include "smarttasks.secretEnv" (dict "env" "SMARTTASKS_REDIS_URL" "secret" (ternary $redis.existingSecret (include "smarttasks.prefixed" (dict "root" .root "suffix" "redis")) (not (empty $redis.existingSecret))) "key" (ternary $redis.existingSecretKey "redis-url" (not (empty $redis.existingSecret)))) }}
{{- end }}
{{- end }}

{{- define "smarttasks.env.tasks" -}}
{{ include "smarttasks.databaseEnv" .root }}
{{- end }}

{{- define "smarttasks.env.rules-api" -}}
- name: SMARTTASKS_RULES_NAMESPACE
  value: {{ default .root.Release.Namespace .root.Values.rulesApi.rulesNamespace | quote }}
{{- end }}

{{- define "smarttasks.env.notifications" -}}
{{- $smtp := .root.Values.smtp }}
{{- $n := .root.Values.notifications }}
{{ include "smarttasks.databaseEnv" .root }}
{{ include "smarttasks.amqpEnv" .root }}
- name: SMARTTASKS_SMTP_HOST
  value: {{ $smtp.host | quote }}
- name: SMARTTASKS_SMTP_PORT
  value: {{ $smtp.port | quote }}
- name: SMARTTASKS_SMTP_SECURITY
  value: {{ $smtp.security | quote }}
- name: SMARTTASKS_SMTP_VALIDATE_CERTS
  value: {{ $smtp.validateCerts | quote }}
- name: SMARTTASKS_SMTP_USERNAME
  value: {{ $smtp.username | quote }}
{{- if $smtp.existingSecret }}
{{ include "smarttasks.secretEnv" (dict "env" "SMARTTASKS_SMTP_PASSWORD" "secret" $smtp.existingSecret "key" $smtp.existingSecretKey) }}
{{- else if $smtp.password }}
{{ include "smarttasks.secretEnv" (dict "env" "SMARTTASKS_SMTP_PASSWORD" "secret" (include "smarttasks.prefixed" (dict "root" .root "suffix" "smtp")) "key" "smtp-password") }}
{{- end }}
- name: SMARTTASKS_MAIL_FROM
  value: {{ $smtp.from | quote }}
- name: SMARTTASKS_OUTBOX_DIR
  value: /tmp/outbox
- name: SMARTTASKS_SECRET_SOURCE
  value: {{ $n.secretSource | quote }}
- name: SMARTTASKS_WEBHOOK_ALLOW_PRIVATE
  value: {{ $n.webhookAllowPrivate | quote }}
- name: SMARTTASKS_USERS_API_URL
  value: {{ include "smarttasks.serviceUrl" (dict "root" .root "name" "users" "key" "users") | quote }}
- name: SMARTTASKS_USERS_API_TOKEN_FILE
  value: {{ include "smarttasks.serviceTokenPath" .root | quote }}
{{- end }}

{{- define "smarttasks.env.operator" -}}
{{- $o := .root.Values.operator }}
{{- if and (not $o.peering.create) (gt (int $o.replicaCount) 1) }}
{{- fail "operator.peering.create=false with more than one replica would let every replica handle rules: keep the peering, or run one replica" }}
{{- end }}
{{ include "smarttasks.databaseEnv" .root }}
{{ include "smarttasks.amqpEnv" .root }}
- name: SMARTTASKS_OPERATOR_NAMESPACES
  value: {{ join "," $o.namespaces | quote }}
- name: SMARTTASKS_OPERATOR_PEERING_MODE
  value: {{ ternary "mandatory" "auto" $o.peering.create | quote }}
- name: SMARTTASKS_OPERATOR_PEERING_NAME
  value: {{ include "smarttasks.peeringName" .root | quote }}
- name: SMARTTASKS_OPERATOR_LIVENESS_PORT
  value: {{ $o.port | quote }}
- name: SMARTTASKS_METRICS_PORT
  value: {{ $o.metricsPort | quote }}
# kopf names itself in the peering object by this (the pod name).
- name: POD_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}

{{- define "smarttasks.env.relay" -}}
{{ include "smarttasks.databaseEnv" .root }}
{{ include "smarttasks.amqpEnv" .root }}
- name: SMARTTASKS_RELAY_OUTBOXES
  value: {{ join "," .root.Values.relay.outboxes | quote }}
- name: SMARTTASKS_METRICS_PORT
  value: {{ .root.Values.relay.port | quote }}
{{- end }}

{{/* A hash of the secret values in values.yaml, so that pods restart when they change. */}}
{{- define "smarttasks.configChecksum" -}}
{{- $v := .Values }}
{{- list $v.database $v.amqp $v.redis $v.smtp $v.jwt.signingKey.existingSecret $v.jwt.signingKey.pem $v.serviceToken.existingSecret | toJson | sha256sum }}
{{- end }}

{{- define "smarttasks.deployment" -}}
{{- $root := .root }}
{{- $c := index $root.Values .key }}
{{- $http := has .name (list "users" "tasks" "rules-api" "notifications") }}
{{- $serviceToken := has .name (list "users" "notifications") }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "smarttasks.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "smarttasks.componentLabels" . | nindent 4 }}
spec:
  {{- if not (and (hasKey $c "autoscaling") $c.autoscaling.enabled) }}
  replicas: {{ $c.replicaCount }}
  {{- end }}
  revisionHistoryLimit: {{ $root.Values.global.revisionHistoryLimit }}
  {{- if eq .name "operator" }}
  # Old and new versions never run together, not even during a rollout.
  strategy:
    type: Recreate
  {{- else }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  {{- end }}
  selector:
    matchLabels:
      {{- include "smarttasks.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "smarttasks.selectorLabels" . | nindent 8 }}
        {{- with $c.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include "smarttasks.configChecksum" $root }}
        {{- with $c.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "smarttasks.serviceAccountName" . }}
      automountServiceAccountToken: {{ $c.serviceAccount.automountToken }}
      enableServiceLinks: false
      {{- with (default $root.Values.global.priorityClassName $c.priorityClassName) }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $root.Values.global.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: 30
      containers:
        - name: {{ .name }}
          image: {{ include "smarttasks.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            - run
            - {{ .name }}
            - --port
            - {{ $c.port | quote }}
            {{- if $http }}
            - --workers
            - {{ $c.workers | quote }}
            {{- end }}
          ports:
            - name: http
              containerPort: {{ $c.port }}
              protocol: TCP
            {{- if eq .name "operator" }}
            - name: metrics
              containerPort: {{ $c.metricsPort }}
              protocol: TCP
            {{- end }}
          env:
            {{- include "smarttasks.commonEnv" $root | nindent 12 }}
            {{- include (printf "smarttasks.env.%s" .name) . | nindent 12 }}
            {{- with $c.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- with $c.extraEnvFrom }}
          envFrom:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          startupProbe:
            httpGet:
              path: /healthz
              port: http
            {{- toYaml $root.Values.probes.startup | nindent 12 }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            {{- toYaml $root.Values.probes.liveness | nindent 12 }}
          readinessProbe:
            httpGet:
              # kopf serves /healthz only.
              path: {{ ternary "/healthz" "/readyz" (eq .name "operator") }}
              port: http
            {{- toYaml $root.Values.probes.readiness | nindent 12 }}
          resources:
            {{- toYaml $c.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            {{- include "smarttasks.tmpMount" $root | nindent 12 }}
            {{- if eq .name "users" }}
            - name: jwt
              mountPath: /etc/smarttasks/jwt
              readOnly: true
            {{- end }}
            {{- if $serviceToken }}
            {{- include "smarttasks.serviceTokenMount" $root | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "smarttasks.tmpVolume" $root | nindent 8 }}
        {{- if eq .name "users" }}
        - name: jwt
          secret:
            secretName: {{ include "smarttasks.jwtSecretName" $root }}
            defaultMode: 0440
            items:
              - key: {{ include "smarttasks.jwtSecretKey" $root }}
                path: signing-key.pem
        {{- end }}
        {{- if $serviceToken }}
        {{- include "smarttasks.serviceTokenVolume" $root | nindent 8 }}
        {{- end }}
      {{- with $c.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{- define "smarttasks.service" -}}
{{- $c := index .root.Values .key }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "smarttasks.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "smarttasks.componentLabels" . | nindent 4 }}
  {{- with $c.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $c.service.type }}
  selector:
    {{- include "smarttasks.selectorLabels" . | nindent 4 }}
  ports:
    - name: http
      port: {{ $c.service.port }}
      targetPort: http
      protocol: TCP
    {{- if eq .name "operator" }}
    - name: metrics
      port: {{ $c.metricsPort }}
      targetPort: metrics
      protocol: TCP
    {{- end }}
{{- end }}

{{- define "smarttasks.serviceAccount" -}}
{{- $c := index .root.Values .key }}
{{- if $c.serviceAccount.create }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "smarttasks.serviceAccountName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "smarttasks.componentLabels" . | nindent 4 }}
  {{- with $c.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: {{ $c.serviceAccount.automountToken }}
{{- end }}
{{- end }}

{{- define "smarttasks.hpa" -}}
{{- $c := index .root.Values .key }}
{{- if $c.autoscaling.enabled }}
{{- if gt (int $c.autoscaling.minReplicas) (int $c.autoscaling.maxReplicas) }}
{{- fail (printf "%s.autoscaling: minReplicas (%v) is more than maxReplicas (%v)" .key $c.autoscaling.minReplicas $c.autoscaling.maxReplicas) }}
{{- end }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "smarttasks.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "smarttasks.componentLabels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "smarttasks.componentName" . }}
  minReplicas: {{ $c.autoscaling.minReplicas }}
  maxReplicas: {{ $c.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $c.autoscaling.targetCPUUtilizationPercentage }}
{{- end }}
{{- end }}

{{- define "smarttasks.pdb" -}}
{{- $c := index .root.Values .key }}
{{- if $c.podDisruptionBudget.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "smarttasks.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "smarttasks.componentLabels" . | nindent 4 }}
spec:
  minAvailable: {{ $c.podDisruptionBudget.minAvailable }}
  selector:
    matchLabels:
      {{- include "smarttasks.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}
