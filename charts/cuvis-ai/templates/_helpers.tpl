{{/* ---------------------------------------------------------------- names */}}

{{- define "cuvis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cuvis.fullname" -}}
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

{{/* "<fullname>-<suffix>", cut to the 63 characters a DNS label allows. */}}
{{- define "cuvis.componentName" -}}
{{- printf "%s-%s" (include "cuvis.fullname" .ctx | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component -}}
{{- end -}}

{{- define "cuvis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cuvis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cuvis.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- labels */}}

{{/* Call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "cuvis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cuvis.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cuvis.labels" -}}
helm.sh/chart: {{ include "cuvis.chart" .ctx }}
{{ include "cuvis.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: cuvis-ai
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* ---------------------------------------------------------------- images */}}

{{/* Call with (dict "ctx" $ "image" .Values.gateway.image). */}}
{{- define "cuvis.image" -}}
{{- $img := .image -}}
{{- $ref := $img.repository -}}
{{- if $img.registry -}}{{- $ref = printf "%s/%s" $img.registry $img.repository -}}{{- end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $ref $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (default .ctx.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- settings as CUVIS_* env */}}

{{/* One setting value as an environment string: lists as JSON (pydantic-settings parses them),
     whole floats without a fraction or exponent (1073741824, not 1.073741824e+09). */}}
{{- define "cuvis.envValue" -}}
{{- $v := . -}}
{{- if kindIs "slice" $v -}}
{{- toJson $v -}}
{{- else if kindIs "float64" $v -}}
{{- if eq (floor $v) $v -}}{{- printf "%d" (int64 $v) -}}{{- else -}}{{- $v -}}{{- end -}}
{{- else -}}
{{- $v -}}
{{- end -}}
{{- end -}}

{{/* env entries for a map of settings in camelCase: maxSessions -> CUVIS_MAX_SESSIONS. */}}
{{- define "cuvis.settingsEnv" -}}
{{- range $key, $value := . }}
- name: {{ printf "CUVIS_%s" ($key | snakecase | upper) }}
  value: {{ include "cuvis.envValue" $value | quote }}
{{- end }}
{{- end -}}

{{/* ---------------------------------------------------------------- Redis */}}

{{- define "cuvis.redisAuthSecret" -}}
{{- default (include "cuvis.componentName" (dict "ctx" . "component" "redis-auth")) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{/* REDIS_PASSWORD (a helper only used inside CUVIS_REDIS_URL) and CUVIS_REDIS_URL. */}}
{{- define "cuvis.redisEnv" -}}
{{- $r := .Values.redis -}}
{{- if $r.enabled }}
{{- $host := printf "%s:%d" (include "cuvis.componentName" (dict "ctx" . "component" "redis")) (int $r.port) }}
{{- if $r.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "cuvis.redisAuthSecret" . }}
      key: {{ $r.auth.passwordKey }}
- name: CUVIS_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s/0" $host | quote }}
{{- else }}
- name: CUVIS_REDIS_URL
  value: {{ printf "redis://%s/0" $host | quote }}
{{- end }}
{{- else }}
{{- $e := $r.external -}}
{{- if and $e.existingSecret $e.urlKey }}
- name: CUVIS_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $e.existingSecret }}
      key: {{ $e.urlKey }}
{{- else }}
{{- if not $e.url }}
{{- fail "redis.enabled=false needs redis.external.url (or redis.external.existingSecret with urlKey)" }}
{{- end }}
{{- if $e.existingSecret }}
{{- $parts := splitList "://" $e.url }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $e.existingSecret }}
      key: {{ $e.passwordKey }}
- name: CUVIS_REDIS_URL
  value: {{ printf "%s://%s:$(REDIS_PASSWORD)@%s" (index $parts 0) $e.username (index $parts 1) | quote }}
{{- else }}
- name: CUVIS_REDIS_URL
  value: {{ $e.url | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* ---------------------------------------------------------------- TLS */}}

{{- define "cuvis.gatewayTlsSecret" -}}
{{- if .Values.tls.gateway.existingSecret -}}
{{- .Values.tls.gateway.existingSecret -}}
{{- else if .Values.tls.certManager.enabled -}}
{{- include "cuvis.componentName" (dict "ctx" . "component" "gateway-tls") -}}
{{- else -}}
{{- fail "tls.gateway.enabled needs tls.gateway.existingSecret or tls.certManager.enabled" -}}
{{- end -}}
{{- end -}}

{{/* "<secret>/<key>" of the CA bundle that signs client certificates (mTLS on the gateway). */}}
{{- define "cuvis.gatewayClientCa" -}}
{{- $ca := .Values.tls.gateway.clientCa -}}
{{- if $ca.existingSecret -}}
{{- printf "%s/%s" $ca.existingSecret $ca.key -}}
{{- else if .Values.tls.certManager.enabled -}}
{{- printf "%s/ca.crt" (include "cuvis.gatewayTlsSecret" .) -}}
{{- else -}}
{{- fail "tls.gateway.clientCa.enabled needs tls.gateway.clientCa.existingSecret or tls.certManager.enabled" -}}
{{- end -}}
{{- end -}}

{{- define "cuvis.workerTlsSecret" -}}
{{- if .Values.tls.workers.existingSecret -}}
{{- .Values.tls.workers.existingSecret -}}
{{- else if .Values.tls.certManager.enabled -}}
{{- include "cuvis.componentName" (dict "ctx" . "component" "worker-tls") -}}
{{- else -}}
{{- fail "tls.workers.enabled needs tls.workers.existingSecret or tls.certManager.enabled" -}}
{{- end -}}
{{- end -}}

{{- define "cuvis.gatewayWorkerClientSecret" -}}
{{- if .Values.tls.workers.clientExistingSecret -}}
{{- .Values.tls.workers.clientExistingSecret -}}
{{- else if .Values.tls.certManager.enabled -}}
{{- include "cuvis.componentName" (dict "ctx" . "component" "gateway-worker-client") -}}
{{- else -}}
{{- fail "tls.workers.enabled needs tls.workers.clientExistingSecret or tls.certManager.enabled" -}}
{{- end -}}
{{- end -}}

{{- define "cuvis.workerServerName" -}}
{{- default (printf "%s.%s.svc" (include "cuvis.componentName" (dict "ctx" . "component" "worker")) .Release.Namespace) .Values.tls.workers.serverName -}}
{{- end -}}

{{/* ---------------------------------------------------------------- pods */}}

{{- define "cuvis.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
fsGroup: {{ .fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "cuvis.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
{{- end -}}

{{/* terminationGracePeriodSeconds: explicit, or preStop + the server's grace + 10 s. */}}
{{- define "cuvis.terminationGrace" -}}
{{- if .terminationGracePeriodSeconds -}}
{{- .terminationGracePeriodSeconds -}}
{{- else -}}
{{- add (int .preStopSleepSeconds) (int (ceil .config.graceSeconds)) 10 -}}
{{- end -}}
{{- end -}}

{{/* Startup, readiness and liveness probes of a gRPC server.
     Call with (dict "c" <component values> "tls" <bool>).
     Readiness: kubelet's native gRPC probe (SERVING only); with TLS an exec probe doing the same,
     since kubelet's gRPC probe cannot speak TLS. Startup and liveness: by default an exec probe
     that passes on any health answer, so that NOT_SERVING (no Redis, draining) never restarts a pod. */}}
{{- define "cuvis.probes" -}}
{{- $c := .c -}}
{{- $p := $c.probes -}}
{{- $hc := list "python" "-m" "cuvis_cluster.deploy.healthcheck" -}}
{{- $native := and (eq $p.livenessMode "grpc") (not .tls) -}}
startupProbe:
  {{- if $native }}
  grpc:
    port: {{ $c.port }}
  {{- else }}
  exec:
    command: {{ concat $hc (list "--mode" "alive" "--timeout" (toString (max 1 (sub (int $p.startup.timeoutSeconds) 1)))) | toJson }}
  {{- end }}
  periodSeconds: {{ $p.startup.periodSeconds }}
  timeoutSeconds: {{ $p.startup.timeoutSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
readinessProbe:
  {{- if .tls }}
  exec:
    command: {{ concat $hc (list "--mode" "ready" "--timeout" (toString (max 1 (sub (int $p.readiness.timeoutSeconds) 1)))) | toJson }}
  {{- else }}
  grpc:
    port: {{ $c.port }}
  {{- end }}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
livenessProbe:
  {{- if $native }}
  grpc:
    port: {{ $c.port }}
  {{- else }}
  exec:
    command: {{ concat $hc (list "--mode" "alive" "--timeout" (toString (max 1 (sub (int $p.liveness.timeoutSeconds) 1)))) | toJson }}
  {{- end }}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
{{- end -}}

{{- define "cuvis.preStop" -}}
preStop:
  exec:
    command: ["sleep", {{ . | toString | quote }}]
{{- end -}}

{{/* The Redis host the NetworkPolicy and NOTES talk about. */}}
{{- define "cuvis.redisName" -}}
{{- include "cuvis.componentName" (dict "ctx" . "component" "redis") -}}
{{- end -}}

{{/* ---------------------------------------------------------------- configs */}}

{{/* relative path -> content of every config file: the bundled tree, then configs.files over it.
     As JSON: a toYaml/fromYaml round trip would drop the last file's final newline. */}}
{{- define "cuvis.configFiles" -}}
{{- $files := dict -}}
{{- if .Values.configs.bundled -}}
{{- range $path, $_ := .Files.Glob "files/configs/**" -}}
{{- if or (hasSuffix ".yaml" $path) (hasSuffix ".yml" $path) -}}
{{- $_ := set $files (trimPrefix "files/configs/" $path) ($.Files.Get $path) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $path, $content := .Values.configs.files -}}
{{- $_ := set $files $path $content -}}
{{- end -}}
{{- toJson $files -}}
{{- end -}}

{{/* ConfigMap keys cannot hold "/": pipeline/a.yaml is stored as pipeline__a.yaml. */}}
{{- define "cuvis.configKey" -}}
{{- . | replace "/" "__" -}}
{{- end -}}

{{/* {items: [{key, path}]} mapping the ConfigMap keys back to the directory tree. */}}
{{- define "cuvis.configItems" -}}
{{- $files := include "cuvis.configFiles" . | fromJson -}}
{{- $items := list -}}
{{- range $path, $_ := $files -}}
{{- $items = append $items (dict "key" (include "cuvis.configKey" $path) "path" $path) -}}
{{- end -}}
{{- toJson (dict "items" $items) -}}
{{- end -}}
