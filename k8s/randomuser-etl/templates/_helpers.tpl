{{/* The prefix of every object's name. */}}
{{- define "etl.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries (commonLabels included). */}}
{{- define "etl.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/part-of: randomuser-etl
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- range $k, $v := .Values.commonLabels }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
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

{{/* A pod template's metadata: (dict "root" $ "name" .. "component" .. "c" <component values>
     "annotations" <dict>). Selector labels, commonLabels, podLabels (global, then the
     component's), annotations (given, podAnnotations global, then the component's). */}}
{{- define "etl.podMetadata" -}}
{{- $r := .root -}}
{{- $c := .c | default dict -}}
labels:
  {{- include "etl.selector" . | nindent 2 }}
  {{- $labels := merge (deepCopy ($c.podLabels | default dict)) (deepCopy ($r.Values.podLabels | default dict)) (deepCopy ($r.Values.commonLabels | default dict)) }}
  {{- range $k, $v := $labels }}
  {{- if not (has $k (list "app.kubernetes.io/instance" "app.kubernetes.io/name" "app.kubernetes.io/component")) }}
  {{ $k }}: {{ $v | toString | quote }}
  {{- end }}
  {{- end }}
{{- $ann := merge (deepCopy (.annotations | default dict)) (deepCopy ($c.podAnnotations | default dict)) (deepCopy ($r.Values.podAnnotations | default dict)) }}
{{- with $ann }}
annotations:
  {{- range $k, $v := . }}
  {{ $k }}: {{ $v | toString | quote }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* What every pod spec carries: (dict "root" $ "c" <component values>). Pull secrets,
     priority class, the restricted security context, and scheduling: the component's
     nodeSelector/tolerations/affinity/priorityClassName when set, else the global ones. */}}
{{- define "etl.podCommon" -}}
{{- $r := .root -}}
{{- $c := .c | default dict -}}
securityContext:
  {{- include "etl.podSecurityContext" $r | nindent 2 }}
{{- with $r.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($c.priorityClassName | default $r.Values.priorityClassName) }}
priorityClassName: {{ . }}
{{- end }}
{{- with ($c.nodeSelector | default $r.Values.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($c.tolerations | default $r.Values.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($c.affinity | default $r.Values.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "etl.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The ServiceAccount of the pods that need no cloud identity, and the loaders'. */}}
{{- define "etl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "etl.fullname" .) }}
{{- else -}}
{{ .Values.serviceAccount.name | default "default" }}
{{- end -}}
{{- end -}}

{{- define "etl.loaderServiceAccountName" -}}
{{- $sa := .Values.loader.serviceAccount -}}
{{- if $sa.create -}}
{{ $sa.name | default (printf "%s-loader" (include "etl.fullname" .)) }}
{{- else -}}
{{ $sa.name | default "default" }}
{{- end -}}
{{- end -}}

{{/* The loaders' consumer group: kafka.groupId, else <fullname>-loader (one group per release). */}}
{{- define "etl.groupId" -}}
{{- .Values.kafka.groupId | default (printf "%s-loader" (include "etl.fullname" .)) -}}
{{- end -}}

{{/* The restricted Pod Security Standard. OnRootMismatch: a volume already owned by 10001 is
     not walked again at every start (a large Parquet volume would delay each loader). */}}
{{- define "etl.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
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

{{/* The database URL as a file from a Secret: (dict "name" "db" "secret" "etl-db-loader" "key" "url"). */}}
{{- define "etl.dbVolume" -}}
- name: {{ .name }}
  secret:
    secretName: {{ .secret }}
    defaultMode: 0440
    items:
      - {key: {{ .key | default "url" | quote }}, path: url}
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
    secretName: {{ required "kafka.sasl.passwordSecret (a Secret with the password under kafka.sasl.passwordKey)" .Values.kafka.sasl.passwordSecret }}
    defaultMode: 0440
    items:
      - {key: {{ .Values.kafka.sasl.passwordKey | quote }}, path: password}
{{- end }}
{{- if .Values.kafka.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.caSecret }}
    defaultMode: 0444
    items:
      - {key: {{ .Values.kafka.caKey | quote }}, path: ca.crt}
{{- end }}
{{- end -}}

{{/* extraEnv / envFrom for a container: (dict "root" $ "c" <component values>). Global first,
     then the component's; for Secrets (secretKeyRef / secretRef), never the ConfigMap. */}}
{{- define "etl.extraEnv" -}}
{{- $r := .root -}}
{{- $c := .c | default dict -}}
{{- with concat ($r.Values.extraEnv | default list) ($c.extraEnv | default list) }}{{ toYaml . }}{{- end }}
{{- end -}}

{{- define "etl.extraEnvFrom" -}}
{{- $r := .root -}}
{{- $c := .c | default dict -}}
{{- with concat ($r.Values.extraEnvFrom | default list) ($c.extraEnvFrom | default list) }}{{ toYaml . }}{{- end }}
{{- end -}}

{{- define "etl.extraVolumeMounts" -}}
{{- $r := .root -}}
{{- $c := .c | default dict -}}
{{- with concat ($r.Values.extraVolumeMounts | default list) ($c.extraVolumeMounts | default list) }}{{ toYaml . }}{{- end }}
{{- end -}}

{{- define "etl.extraVolumes" -}}
{{- $r := .root -}}
{{- $c := .c | default dict -}}
{{- with concat ($r.Values.extraVolumes | default list) ($c.extraVolumes | default list) }}{{ toYaml . }}{{- end }}
{{- end -}}

{{/* A Go duration ("30s", "10m", "1h", "1h30m") in seconds. */}}
{{- define "etl.seconds" -}}
{{- $total := 0 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h)" (toString .) -1 -}}
{{- $n := regexFind "^[0-9]+" . | int -}}
{{- $u := trimPrefix (toString $n) . -}}
{{- if eq $u "h" }}{{ $total = add $total (mul $n 3600) }}{{ else if eq $u "m" }}{{ $total = add $total (mul $n 60) }}{{ else if eq $u "s" }}{{ $total = add $total $n }}{{ end -}}
{{- end -}}
{{- $total -}}
{{- end -}}
