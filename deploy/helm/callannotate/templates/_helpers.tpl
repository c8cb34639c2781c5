{{/* Names ------------------------------------------------------------------------------ */}}

{{- define "callannotate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "callannotate.fullname" -}}
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

{{- define "callannotate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "callannotate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "callannotate.claimName" -}}
{{- default (printf "%s-data" (include "callannotate.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{- define "callannotate.secretName" -}}
{{- default (include "callannotate.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* Labels: selectorLabels never change after install (a Deployment's selector is fixed). */}}

{{- define "callannotate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "callannotate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "callannotate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "callannotate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: callannotate
{{- end -}}

{{/* The image: by digest when given, else by tag (default appVersion; never "latest"). */}}

{{- define "callannotate.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag | toString -}}
{{- if eq $tag "latest" -}}
{{- fail "image.tag: \"latest\" is not allowed; name a version (default: the chart's appVersion)" -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Pod-level settings shared by the API and the worker pods. */}}

{{- define "callannotate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "callannotate.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "callannotate.volumes" -}}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "callannotate.claimName" . }}
- name: models-config
  configMap:
    name: {{ include "callannotate.fullname" . }}-models
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- $keys := (include "callannotate.fileSecretKeys" . | fromYaml).keys }}
{{- if $keys }}
- name: secrets
  secret:
    secretName: {{ include "callannotate.secretName" . }}
    # group-readable: the pod's fsGroup owns the files
    defaultMode: 0440
    items:
      {{- range $keys }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- end }}
{{- end -}}

{{- define "callannotate.volumeMounts" -}}
- name: data
  mountPath: {{ .Values.dataDir }}
- name: models-config
  mountPath: /etc/callannotate
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if (include "callannotate.fileSecretKeys" . | fromYaml).keys }}
- name: secrets
  mountPath: /run/secrets/callannotate
  readOnly: true
{{- end }}
{{- end -}}

{{/* Secret settings read from files (the service's `<setting>_file` form): Secret key ->
     setting variable. The Secret is mounted at /run/secrets/callannotate. */}}
{{- define "callannotate.fileSecretSettings" -}}
jwt-secret: CALLANNOTATE_AUTH__JWT_SECRET
encryption-master-key: CALLANNOTATE_ENCRYPTION__MASTER_KEY
database-password: CALLANNOTATE_DATABASE__PASSWORD
metrics-token: CALLANNOTATE_METRICS__TOKEN
callbacks-secret: CALLANNOTATE_CALLBACKS__SECRET
{{- end -}}

{{/* The file-secret keys the pods get: from secrets.existingSecretKeys for a Secret the
     operator manages, else the values that are set. Output: a YAML list. */}}
{{- define "callannotate.fileSecretKeys" -}}
{{- $s := .Values.secrets -}}
{{- $keys := list -}}
{{- if $s.existingSecret -}}
{{- $keys = $s.existingSecretKeys -}}
{{- else -}}
{{- $values := dict "jwt-secret" $s.jwtSecret "encryption-master-key" $s.encryptionMasterKey "database-password" $s.databasePassword "metrics-token" $s.metricsToken "callbacks-secret" $s.callbacksSecret -}}
{{- range $key, $value := $values }}{{ if $value }}{{ $keys = append $keys $key }}{{ end }}{{ end -}}
{{- end -}}
{{- toYaml (dict "keys" (sortAlpha $keys)) -}}
{{- end -}}

{{- define "callannotate.env" -}}
- name: CALLANNOTATE_DATA_DIR
  value: {{ .Values.dataDir | quote }}
- name: CALLANNOTATE_MODELS_CONFIG
  value: /etc/callannotate/models.yaml
- name: CALLANNOTATE_JOBS__EXECUTOR
  value: {{ .Values.worker.executor | quote }}
- name: CALLANNOTATE_WORKERS__THREADS
  value: {{ .Values.worker.threads | quote }}
- name: CALLANNOTATE_WORKERS__CONCURRENCY
  value: {{ .Values.worker.processes | quote }}
- name: CALLANNOTATE_LOG__JSON_FORMAT
  value: "true"
{{- if .Values.metrics.enabled }}
- name: CALLANNOTATE_METRICS__HOST
  value: "0.0.0.0"
- name: CALLANNOTATE_METRICS__PORT
  value: {{ .Values.metrics.port | quote }}
{{- end }}
{{- if .Values.redis.enabled }}
- name: CALLANNOTATE_EVENTS__BACKEND
  value: redis
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "callannotate.secretName" . }}
      key: redis-url
- name: CALLANNOTATE_EVENTS__REDIS_URL
  value: $(REDIS_URL)
- name: CALLANNOTATE_JOBS__BROKER_URL
  value: $(REDIS_URL)
{{- end }}
{{- with .Values.database.url }}
- name: CALLANNOTATE_DATABASE__URL
  value: {{ . | quote }}
{{- end }}
{{- $settings := include "callannotate.fileSecretSettings" . | fromYaml }}
{{- range (include "callannotate.fileSecretKeys" . | fromYaml).keys }}
- name: {{ index $settings . }}_FILE
  value: /run/secrets/callannotate/{{ . }}
{{- end }}
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* Checks of value combinations the schema cannot express. */}}
{{- define "callannotate.validate" -}}
{{- if and (eq .Values.worker.executor "celery") (not .Values.redis.enabled) -}}
{{- fail "worker.executor=celery needs redis.enabled=true (the broker URL is the secret key redis-url)" -}}
{{- end -}}
{{- if and .Values.redis.enabled (not .Values.secrets.existingSecret) (not .Values.secrets.redisUrl) -}}
{{- fail "redis.enabled=true needs secrets.redisUrl (or secrets.existingSecret with key redis-url)" -}}
{{- end -}}
{{- if and .Values.worker.autoscaling.enabled (not .Values.metrics.enabled) -}}
{{- fail "worker.autoscaling needs metrics.enabled=true (the queue depth is read from the workers' metrics)" -}}
{{- end -}}
{{- end -}}
