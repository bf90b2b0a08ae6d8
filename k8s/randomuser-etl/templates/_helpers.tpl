{{/* The prefix of every object's name. */}}
{{- define "etl.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "etl.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/part-of: randomuser-etl
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* A workload's selector: (dict "root" $ "name" "loader" "component" "run"). The name is
     what the ServiceMonitor turns into the job label (etl-<name>). */}}
{{- define "etl.selector" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{ include "etl.component" . }}
{{- end -}}

{{/* The same without the instance, beside "etl.labels" (which has it) in metadata. */}}
{{- define "etl.component" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "etl.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The restricted Pod Security Standard. */}}
{{- define "etl.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "etl.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Restarts the pods when their settings change (ConfigMaps are not watched). */}}
{{- define "etl.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end -}}

{{/* The database URL as a file from a Secret: (dict "name" "db" "secret" "etl-db-loader"). */}}
{{- define "etl.dbVolume" -}}
- name: {{ .name }}
  secret:
    secretName: {{ .secret }}
    defaultMode: 0440
{{- end -}}

{{/* The Kafka secrets (SASL password, CA bundle) as files, where the common ConfigMap's
     KAFKA_SASL_PASSWORD_FILE and KAFKA_SSL_CA_LOCATION point. */}}
{{- define "etl.kafkaMounts" -}}
{{- if .Values.kafka.sasl.mechanism }}
- {name: kafka-sasl, mountPath: /run/secrets/kafka-sasl, readOnly: true}
{{- end }}
{{- if .Values.kafka.caSecret }}
- {name: kafka-ca, mountPath: /run/secrets/kafka-ca, readOnly: true}
{{- end }}
{{- end -}}

{{- define "etl.kafkaVolumes" -}}
{{- if .Values.kafka.sasl.mechanism }}
- name: kafka-sasl
  secret:
    secretName: {{ required "kafka.sasl.passwordSecret (a Secret with the key `password`)" .Values.kafka.sasl.passwordSecret }}
    defaultMode: 0440
{{- end }}
{{- if .Values.kafka.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.caSecret }}
    defaultMode: 0444
{{- end }}
{{- end -}}
