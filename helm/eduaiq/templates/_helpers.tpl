{{/*
Names, labels and the pieces every EduAiQ pod shares. The env block lives here
so gateway, admin API, consumers, worker, beat and both hook Jobs read the
same EDUAIQ_* settings from the same Secrets.
*/}}

{{- define "eduaiq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eduaiq.fullname" -}}
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

{{/* "<fullname>-<component>", kept a DNS-1035 label (Service names). */}}
{{- define "eduaiq.componentName" -}}
{{- printf "%s-%s" (include "eduaiq.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* A self-hosted model name as a DNS label: dots and other characters become "-". */}}
{{- define "eduaiq.modelSlug" -}}
{{- regexReplaceAll "[^a-z0-9-]+" (lower .) "-" | trimAll "-" }}
{{- end }}

{{- define "eduaiq.vllmName" -}}
{{- printf "%s-vllm-%s" (include "eduaiq.fullname" .root) (include "eduaiq.modelSlug" .model.name) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eduaiq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eduaiq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eduaiq.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "eduaiq.labels" -}}
helm.sh/chart: {{ include "eduaiq.chart" .root }}
{{ include "eduaiq.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: eduaiq
{{- end }}

{{- define "eduaiq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "eduaiq.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "eduaiq.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "eduaiq.publicBaseUrl" -}}
{{- if .Values.publicBaseUrl }}
{{- .Values.publicBaseUrl | trimSuffix "/" }}
{{- else if .Values.ingress.enabled }}
{{- printf "%s://%s" (ternary "https" "http" .Values.ingress.tls.enabled) .Values.ingress.host }}
{{- else }}
{{- fail "publicBaseUrl is required when ingress.enabled is false" }}
{{- end }}
{{- end }}

{{/* A secretKeyRef env entry: (dict "env" NAME "secret" NAME "key" KEY). */}}
{{- define "eduaiq.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "a Secret name is required for %s" .env) .secret | quote }}
      key: {{ required (printf "a Secret key is required for %s" .env) .key | quote }}
{{- end }}

{{/*
EDUAIQ_* settings every EduAiQ process reads. Variables referenced with
$(NAME) are listed before the variable using them, as Kubernetes requires.
*/}}
{{- define "eduaiq.commonEnv" -}}
{{- $db := .Values.database }}
{{- if $db.urlSecret.name }}
{{ include "eduaiq.secretEnv" (dict "env" "EDUAIQ_DATABASE_URL" "secret" $db.urlSecret.name "key" $db.urlSecret.key) }}
{{- else }}
{{ include "eduaiq.secretEnv" (dict "env" "PGPASSWORD" "secret" $db.passwordSecret.name "key" $db.passwordSecret.key) }}
{{- $auth := ternary (printf "%s:$(PGPASSWORD)" $db.user) $db.user $db.passwordInUrl }}
- name: EDUAIQ_DATABASE_URL
  value: {{ printf "postgresql://%s@%s:%v/%s" $auth (required "database.host is required" $db.host) $db.port $db.name | quote }}
{{- end }}
{{- with $db.sslMode }}
- name: PGSSLMODE
  value: {{ . | quote }}
{{- end }}
{{- if .Values.caBundle.configMap }}
- name: PGSSLROOTCERT
  value: /etc/eduaiq/ca/{{ .Values.caBundle.key }}
{{- end }}
{{- $r := .Values.redis }}
{{- if $r.urlSecret.name }}
{{ include "eduaiq.secretEnv" (dict "env" "EDUAIQ_REDIS_URL" "secret" $r.urlSecret.name "key" $r.urlSecret.key) }}
{{- else }}
{{- $auth := "" }}
{{- if $r.passwordSecret.name }}
{{ include "eduaiq.secretEnv" (dict "env" "REDIS_PASSWORD" "secret" $r.passwordSecret.name "key" $r.passwordSecret.key) }}
{{- $auth = ":$(REDIS_PASSWORD)@" }}
{{- end }}
- name: EDUAIQ_REDIS_URL
  value: {{ printf "%s://%s%s:%v/%v" (ternary "rediss" "redis" $r.tls) $auth (required "redis.host is required" $r.host) $r.port $r.db | quote }}
{{- end }}
{{- $k := .Values.kafka }}
- name: EDUAIQ_KAFKA_BOOTSTRAP
  value: {{ required "kafka.bootstrap is required" $k.bootstrap | quote }}
- name: EDUAIQ_KAFKA_TOPIC
  value: {{ $k.topic | quote }}
- name: EDUAIQ_KAFKA_SECURITY_PROTOCOL
  value: {{ $k.securityProtocol | quote }}
{{- if $k.sasl.mechanism }}
- name: EDUAIQ_KAFKA_SASL_MECHANISM
  value: {{ $k.sasl.mechanism | quote }}
- name: EDUAIQ_KAFKA_SASL_USERNAME
  value: {{ required "kafka.sasl.username is required with a SASL mechanism" $k.sasl.username | quote }}
{{ include "eduaiq.secretEnv" (dict "env" "EDUAIQ_KAFKA_SASL_PASSWORD" "secret" $k.sasl.passwordSecret.name "key" $k.sasl.passwordSecret.key) }}
{{- end }}
- name: EDUAIQ_STATE_DIR
  value: {{ .Values.stateDir | quote }}
- name: EDUAIQ_PUBLIC_BASE_URL
  value: {{ include "eduaiq.publicBaseUrl" . | quote }}
{{- /* The operator's upstream policy (providers/upstream_policy.py): which variables hold provider
secrets (only those the chart maps from Secrets), and which private upstreams are allowed (the
self-hosted models' Services, and what upstream.* lists). Names, not secrets. */}}
{{- $secretVars := list }}
{{- range .Values.providerKeys }}
{{- $entry := .env }}
{{- if .host }}{{ $entry = printf "%s@%s" $entry .host }}{{ end }}
{{- if .institution }}{{ $entry = printf "%s:%s" .institution $entry }}{{ end }}
{{- $secretVars = append $secretVars $entry }}
{{- end }}
{{- if and .Values.selfHosted.models .Values.selfHosted.apiKey.secretName }}
{{- /* The model servers' key goes only to the model servers' Services. */}}
{{- range (include "eduaiq.vllmHosts" . | fromYamlArray) }}
{{- $secretVars = append $secretVars (printf "%s@%s" $.Values.selfHosted.apiKey.env .) }}
{{- end }}
{{- end }}
- name: EDUAIQ_PROVIDER_SECRET_VARS
  value: {{ $secretVars | uniq | join "," | quote }}
{{- /* The same for the institution file's sso: section (admin_api/sso/sso_secrets.py): the variables the
chart maps from Secrets through ssoKeys, each `[institution:]env[@host]`; the import and the admin API
refuse any other name. */}}
{{- $ssoVars := list }}
{{- range .Values.ssoKeys }}
{{- $entry := .env }}
{{- if .host }}{{ $entry = printf "%s@%s" $entry .host }}{{ end }}
{{- if .institution }}{{ $entry = printf "%s:%s" .institution $entry }}{{ end }}
{{- $ssoVars = append $ssoVars $entry }}
{{- end }}
- name: EDUAIQ_SSO_SECRET_VARS
  value: {{ $ssoVars | uniq | join "," | quote }}
- name: EDUAIQ_UPSTREAM_ALLOWED_HOSTS
  value: {{ concat (include "eduaiq.vllmHosts" . | fromYamlArray) .Values.upstream.allowedHosts | uniq | join "," | quote }}
- name: EDUAIQ_UPSTREAM_ALLOWED_CIDRS
  value: {{ .Values.upstream.allowedCidrs | join "," | quote }}
{{- range $name, $value := .Values.settings }}
{{- if has (lower $name) (list "provider_secret_vars" "sso_secret_vars" "upstream_allowed_hosts" "upstream_allowed_cidrs") }}
{{- fail (printf "settings.%s is set by the chart: use providerKeys, ssoKeys, selfHosted.apiKey and upstream.allowedHosts/allowedCidrs" $name) }}
{{- end }}
- name: {{ printf "EDUAIQ_%s" (upper $name) }}
  value: {{ ternary $value (toJson $value) (kindIs "string" $value) | quote }}
{{- end }}
- name: HOME
  value: /tmp
{{- if .Values.caBundle.configMap }}
- name: SSL_CERT_FILE
  value: /etc/eduaiq/ca/{{ .Values.caBundle.key }}
{{- end }}
{{- end }}

{{/* Provider keys: only the gateway holds them. */}}
{{- define "eduaiq.providerKeyEnv" -}}
{{- range .Values.providerKeys }}
{{ include "eduaiq.secretEnv" (dict "env" .env "secret" .secretName "key" .key) }}
{{- end }}
{{- if and .Values.selfHosted.models .Values.selfHosted.apiKey.secretName }}
{{ include "eduaiq.secretEnv" (dict "env" .Values.selfHosted.apiKey.env "secret" .Values.selfHosted.apiKey.secretName "key" .Values.selfHosted.apiKey.key) }}
{{- end }}
{{- end }}

{{/* Writable directories every EduAiQ container mounts. */}}
{{- define "eduaiq.commonVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: state
  mountPath: {{ .Values.stateDir }}
{{- if .Values.caBundle.configMap }}
- name: ca-bundle
  mountPath: /etc/eduaiq/ca
  readOnly: true
{{- end }}
{{- end }}

{{- define "eduaiq.commonVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
- name: state
  emptyDir:
    sizeLimit: 512Mi
{{- if .Values.caBundle.configMap }}
- name: ca-bundle
  configMap:
    name: {{ .Values.caBundle.configMap }}
    items:
      - key: {{ .Values.caBundle.key }}
        path: {{ .Values.caBundle.key }}
{{- end }}
{{- end }}

{{/* Pod-spec fields shared by every EduAiQ pod. */}}
{{- define "eduaiq.podCommon" -}}
serviceAccountName: {{ include "eduaiq.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Scheduling fields of a component's values block. */}}
{{- define "eduaiq.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The start of an EduAiQ container: name, image, security context. */}}
{{- define "eduaiq.containerHead" -}}
- name: {{ .name }}
  image: {{ include "eduaiq.image" .root | quote }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  securityContext:
    {{- toYaml .root.Values.securityContext | nindent 4 }}
{{- end }}

{{/* HTTP probes of the gateway and admin API. */}}
{{- define "eduaiq.httpProbes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 5
  failureThreshold: 60
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
# /readyz pings Redis and PostgreSQL with a 2 s bound each.
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 2
{{- end }}

{{/*
The institution file as text: `org.content` verbatim, or `org.file` as YAML.
Never re-parsed here: Helm's YAML reader differs from the application's (it
reads `y`/`n` as booleans and dates as strings), so self-hosted providers are
added by files/merge_org.py inside the import Job, with the image's own PyYAML.
*/}}
{{- define "eduaiq.orgDocument" -}}
{{- if .Values.org.content }}
{{- .Values.org.content }}
{{- else }}
{{- toYaml .Values.org.file }}
{{- end }}
{{- end }}

{{/* "true" when self-hosted models are to be added to the institution file. */}}
{{/* The self-hosted models' Service host names, as the generated providers' base_url names them. */}}
{{- define "eduaiq.vllmHosts" -}}
{{- $hosts := list }}
{{- range .Values.selfHosted.models }}
{{- $hosts = append $hosts (printf "%s.%s.svc" (include "eduaiq.vllmName" (dict "root" $ "model" .)) $.Release.Namespace) }}
{{- end }}
{{- toYaml $hosts }}
{{- end }}

{{- define "eduaiq.registerModels" -}}
{{- if and .Values.org.enabled .Values.selfHosted.registerInOrg (not .Values.org.existingConfigMap) (gt (len .Values.selfHosted.models) 0) }}true{{ end }}
{{- end }}

{{/* One provider per self-hosted model, pointing at the model's Service. */}}
{{- define "eduaiq.selfHostedProviders" -}}
{{- $sh := .Values.selfHosted }}
{{- $providers := list }}
{{- range $sh.models }}
{{- $model := dict "id" .name "upstream" (default .name .servedModelName) }}
{{- $model = merge $model (deepCopy (default dict .catalogue)) }}
{{- $url := printf "http://%s.%s.svc:%v/v1" (include "eduaiq.vllmName" (dict "root" $ "model" .)) $.Release.Namespace $sh.port }}
{{- $provider := dict "id" (printf "%s%s" $sh.providerIdPrefix (include "eduaiq.modelSlug" .name)) "type" $sh.providerType "base_url" $url "models" (list $model) }}
{{- if $sh.apiKey.secretName }}
{{- $_ := set $provider "api_key_env" $sh.apiKey.env }}
{{- end }}
{{- $providers = append $providers $provider }}
{{- end }}
{{- toYaml (dict "providers" $providers) }}
{{- end }}

{{/*
Fails the render when the institution file names a secret variable no Secret
provides: the gateway (provider keys) or the admin API (SSO keys) would
otherwise start and fail every request that needs it.
*/}}
{{- define "eduaiq.checkKeyEnv" -}}
{{- if and .Values.org.enabled (not .Values.org.existingConfigMap) }}
{{- $doc := include "eduaiq.orgDocument" . | fromYaml }}
{{- if hasKey $doc "Error" }}
{{- fail (printf "the institution file (org.content/org.file) is not a YAML mapping: %v" $doc.Error) }}
{{- end }}
{{- /* The file lives in a ConfigMap, which is not for secrets: API keys go in as key_sha256 only. */}}
{{- range $i, $k := default list $doc.keys }}
{{- if and (kindIs "map" $k) (hasKey $k "key") }}
{{- fail (printf "keys[%d] gives the key itself, and the institution file is stored in a ConfigMap: give its SHA-256 as key_sha256 instead (sha256sum of the key)" $i) }}
{{- end }}
{{- end }}
{{- $providers := default list $doc.providers }}
{{- if include "eduaiq.registerModels" . }}
{{- $providers = concat $providers (include "eduaiq.selfHostedProviders" . | fromYaml).providers }}
{{- end }}
{{- $known := list }}
{{- range .Values.providerKeys }}
{{- $known = append $known .env }}
{{- end }}
{{- if .Values.selfHosted.apiKey.secretName }}
{{- $known = append $known .Values.selfHosted.apiKey.env }}
{{- end }}
{{- range $providers }}
{{- if and .api_key_env (not (has .api_key_env $known)) }}
{{- fail (printf "provider %q reads its key from %s, but providerKeys maps no Secret to it" .id .api_key_env) }}
{{- end }}
{{- end }}
{{- $sso := $doc.sso }}
{{- if not (kindIs "map" $sso) }}{{ $sso = dict }}{{ end }}
{{- $saml := $sso.saml }}
{{- if not (kindIs "map" $saml) }}{{ $saml = dict }}{{ end }}
{{- $oidc := $sso.oidc }}
{{- if not (kindIs "map" $oidc) }}{{ $oidc = dict }}{{ end }}
{{- $ssoKnown := list }}
{{- range .Values.ssoKeys }}
{{- $ssoKnown = append $ssoKnown .env }}
{{- end }}
{{- range $path, $name := dict "sso.saml.sp_private_key_env" $saml.sp_private_key_env "sso.oidc.client_secret_env" $oidc.client_secret_env }}
{{- if and $name (not (has $name $ssoKnown)) }}
{{- fail (printf "%s names %s, but ssoKeys maps no Secret to it" $path $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A Deployment of a process with no HTTP port (consumer, worker, beat):
(dict "root" $ "component" NAME "values" BLOCK "args" LIST "replicas" N
      "recreate" BOOL "workingDir" DIR)
*/}}
{{- define "eduaiq.processDeployment" -}}
{{- $v := .values }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "eduaiq.componentName" . }}
  labels:
    {{- include "eduaiq.labels" . | nindent 4 }}
spec:
  replicas: {{ .replicas }}
  selector:
    matchLabels:
      {{- include "eduaiq.selectorLabels" . | nindent 6 }}
  strategy:
    {{- if .recreate }}
    type: Recreate
    {{- else }}
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 1
      maxSurge: 0
    {{- end }}
  template:
    metadata:
      labels:
        {{- include "eduaiq.labels" . | nindent 8 }}
      {{- with $v.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      {{- include "eduaiq.podCommon" .root | nindent 6 }}
      terminationGracePeriodSeconds: {{ default 30 $v.terminationGracePeriodSeconds }}
      {{- with include "eduaiq.scheduling" $v | trim }}{{ . | nindent 6 }}{{ end }}
      containers:
        {{- include "eduaiq.containerHead" (dict "root" .root "name" .component) | nindent 8 }}
          command:
            {{- toYaml (concat (list "eduaiq") .args) | nindent 12 }}
          {{- with .workingDir }}
          workingDir: {{ . }}
          {{- end }}
          env:
            {{- include "eduaiq.commonEnv" .root | trim | nindent 12 }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          volumeMounts:
            {{- include "eduaiq.commonVolumeMounts" .root | nindent 12 }}
      volumes:
        {{- include "eduaiq.commonVolumes" .root | nindent 8 }}
{{- end }}
