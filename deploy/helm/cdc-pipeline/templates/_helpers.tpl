{{/* Labels every object carries. */}}
{{- define "cdc.labels" -}}
app.kubernetes.io/name: cdc-pipeline
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Selector labels of one component (worker, control, setup): dict "root" $ "component" "..." */}}
{{- define "cdc.selector" -}}
app.kubernetes.io/name: cdc-pipeline
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "cdc.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "cdc.secretName" -}}
{{ .Values.secrets.name | default (printf "%s-secrets" .Release.Name) }}
{{- end }}

{{/* The rendered pipeline configuration (the ConfigMap's pipeline.yaml). */}}
{{- define "cdc.config" -}}
{{ toYaml .Values.config }}
{{- end }}

{{/* checksum/config: sha256 (hex) of the rendered pipeline.yaml, the ConfigMap's only key.
A pod template annotation, so a configuration change changes the template and rolls the pods
(a ConfigMap mounted with subPath is never updated in a running pod). Secrets are left out (no
hash of a password in an annotation): after changing one, `kubectl rollout restart`. */}}
{{- define "cdc.checksum" -}}
{{ include "cdc.config" . | sha256sum }}
{{- end }}

{{/* Pod-level security: non-root, RuntimeDefault seccomp. */}}
{{- define "cdc.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile: {type: RuntimeDefault}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Container-level security. */}}
{{- define "cdc.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: [ALL]}
{{- end }}

{{- define "cdc.env" -}}
env:
  - {name: CDC_CONFIG, value: /etc/cdc-pipeline/pipeline.yaml}
{{- end }}

{{- define "cdc.mounts" -}}
volumeMounts:
  - {name: config, mountPath: /etc/cdc-pipeline/pipeline.yaml, subPath: pipeline.yaml, readOnly: true}
  - {name: secrets, mountPath: /etc/cdc-pipeline/secrets, readOnly: true}
{{- end }}

{{- define "cdc.volumes" -}}
volumes:
  - name: config
    configMap: {name: {{ .Release.Name }}-config}
  - name: secrets
    secret:
      secretName: {{ include "cdc.secretName" . }}
      items:
        {{- range .Values.secrets.keys }}
        - {key: {{ . }}, path: {{ . }}}
        {{- end }}
{{- end }}

{{/* Probes of a long-running plane: /healthz alive, /readyz ready; the startup probe gives
the process 60 s to serve HTTP before liveness counts. */}}
{{- define "cdc.probes" -}}
ports:
  - {name: metrics, containerPort: {{ .Values.config.metrics.port | default 9108 }}}
startupProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 15
  failureThreshold: 4
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  periodSeconds: 10
  failureThreshold: 3
{{- end }}
