{{/*
Names. "kvtier.fullnameFrom" takes (dict "root" $ "values" <kvtier values>) so that a parent chart
(which includes kvtier as a subchart) computes the same names as kvtier itself.
*/}}
{{- define "kvtier.name" -}}
{{- default "kvtier" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvtier.fullnameFrom" -}}
{{- $v := .values -}}
{{- if $v.fullnameOverride }}
{{- $v.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "kvtier" $v.nameOverride }}
{{- if contains $name .root.Release.Name }}
{{- .root.Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .root.Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kvtier.fullname" -}}
{{- include "kvtier.fullnameFrom" (dict "root" . "values" .Values) }}
{{- end }}

{{- define "kvtier.cacheName" -}}
{{- printf "%s-cache" (include "kvtier.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvtier.routerName" -}}
{{- printf "%s-router" (include "kvtier.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvtier.etcdName" -}}
{{- printf "%s-etcd" (include "kvtier.fullnameFrom" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The cache cluster's --cluster URL, etcd://HOST:PORT[,HOST:PORT...]/PREFIX: cluster.etcdEndpoints,
or the chart's own etcd (etcd.enabled). Takes (dict "root" $ "values" <kvtier values>), like
"kvtier.fullnameFrom", so that the worker-agent sidecar in a parent chart computes the same URL.
*/}}
{{- define "kvtier.clusterUrl" -}}
{{- $v := .values -}}
{{- $endpoints := $v.cluster.etcdEndpoints -}}
{{- if and (not $endpoints) $v.etcd.enabled -}}
{{- $endpoints = list (printf "%s.%s.svc:%d" (include "kvtier.etcdName" .) .root.Release.Namespace (int $v.etcd.clientPort)) -}}
{{- end -}}
{{- if not $endpoints -}}
{{- fail "cluster.enabled needs cluster.etcdEndpoints (HOST:PORT of your etcd) or etcd.enabled (the chart's single-node etcd, for trying it out)" -}}
{{- end -}}
{{- printf "etcd://%s%s" (join "," $endpoints) $v.cluster.prefix -}}
{{- end }}

{{- define "kvtier.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvtier.labels" -}}
helm.sh/chart: {{ include "kvtier.chart" . }}
app.kubernetes.io/name: {{ include "kvtier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kvtier
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "cache") */}}
{{- define "kvtier.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvtier.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* image reference: (dict "root" $ "image" <component image values, may be empty>) */}}
{{- define "kvtier.image" -}}
{{- $repo := .root.Values.image.repository -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag -}}
{{- with .image }}
{{- if .repository }}{{ $repo = .repository }}{{ end }}
{{- if .tag }}{{ $tag = .tag }}{{ end }}
{{- end }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/* gRPC address of cache replica i: (dict "root" $ "i" 0) */}}
{{- define "kvtier.cacheReplicaAddr" -}}
{{- $cache := include "kvtier.cacheName" .root -}}
{{- printf "http://%s-%d.%s-headless.%s.svc:%d" $cache (int .i) $cache .root.Release.Namespace (int .root.Values.cache.grpcPort) }}
{{- end }}

{{/*
Worker-agent sidecar container, for your inference pod's `containers:` list:

  containers:
    - name: vllm
      ...
    {{- include "kvtier.workerAgent.container" (dict "root" . "values" .Values.kvtier) | nindent 4 }}

"root" is the including chart's top context, "values" the kvtier values (.Values.kvtier when kvtier
is a subchart of yours, .Values inside this chart). By default the agent serves only a Unix
socket, workerAgent.uds (/dev/shm/kvtier/agent.sock), which the engine reaches through the shared
kvtier-shm volume; TCP (workerAgent.listenHost) is off. Pair it with
"kvtier.workerAgent.volumes" in the pod's `volumes:` (a memory-backed /dev/shm shared with the
engine, for shared-memory KV pools), and mount `kvtier-shm` at /dev/shm in the engine too.
kvtier-agent serves grpc.health.v1 ("kvtier.v1.WorkerService"), and /metrics on
workerAgent.metricsHost:metricsPort (container port `kvtier-metrics` when not on loopback).
For the router to reach the agent (it subscribes to the agent's events), listenHost must be a
pod address (0.0.0.0), which kvtier-agent allows only with bearer tokens (workerAgent.auth;
the router presents router.agentToken). Kubelet's gRPC probes dial the pod IP, so the sidecar
gets readiness and liveness probes only on such a listener (TCP checks with workerAgent.tls);
without TCP it has none.
*/}}
{{- define "kvtier.workerAgent.container" -}}
{{- $v := .values -}}
{{- $a := $v.workerAgent -}}
{{- $repo := $v.image.repository -}}
{{- $tag := default "0.1.0" $v.image.tag -}}
{{- if $a.image.repository }}{{ $repo = $a.image.repository }}{{ end -}}
{{- if $a.image.tag }}{{ $tag = $a.image.tag }}{{ end -}}
{{- $endpoint := $a.cacheEndpoint -}}
{{- $client := dict "values" $v "token" $a.cacheToken "explicit" (not (empty $a.cacheEndpoint)) "who" "workerAgent" -}}
{{- include "kvtier.cacheClient.check" $client -}}
{{- if not $endpoint -}}
{{- $cache := printf "%s-cache" (include "kvtier.fullnameFrom" .) | trunc 63 | trimSuffix "-" -}}
{{- $endpoint = printf "%s://%s.%s.svc:%d" (ternary "https" "http" $v.cache.tls.enabled) $cache .root.Release.Namespace (int $v.cache.grpcPort) -}}
{{- end -}}
{{- if and (not $a.uds) (not $a.listenHost) -}}
{{- fail "workerAgent: set uds (the engine's Unix socket) or listenHost (TCP); kvtier-agent needs one to serve on" -}}
{{- end -}}
{{- $tcpExposed := and $a.listenHost (not (hasPrefix "127." (toString $a.listenHost))) -}}
{{- if and $tcpExposed (not $a.auth.tokensSecretName) -}}
{{- fail "workerAgent.listenHost on the pod network needs workerAgent.auth.tokensSecretName: kvtier-agent refuses a non-loopback TCP listener without bearer tokens (whoever reaches it could copy files into the cache and cache bytes into pools)" -}}
{{- end -}}
{{- $dataEndpoint := $a.cacheDataEndpoint -}}
{{- if and $v.cluster.enabled $a.cacheDataEndpoint -}}
{{- fail "workerAgent.cacheDataEndpoint with cluster.enabled: it names one server, but in cluster mode kvtier-agent reaches each block's owner on the data address in that replica's membership record; leave cacheDataEndpoint empty and set workerAgent.dataPlane (-> --cluster-data-plane)" -}}
{{- end -}}
{{- if and $a.dataPlane (not $dataEndpoint) -}}
{{- if or (not $v.cache.dataPort) $v.cache.tls.enabled -}}
{{- fail "workerAgent.dataPlane needs cache.dataPort and a cache server without TLS (its data plane is plaintext), or an explicit workerAgent.cacheDataEndpoint" -}}
{{- end -}}
{{- $cache := printf "%s-cache" (include "kvtier.fullnameFrom" .) | trunc 63 | trimSuffix "-" -}}
{{- $dataEndpoint = printf "%s.%s.svc:%d" $cache .root.Release.Namespace (int $v.cache.dataPort) -}}
{{- end -}}
- name: kvtier-agent
  image: {{ printf "%s:%s" $repo $tag | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  command: {{ toJson $a.command }}
  args:
    - --uds
    - {{ default "off" $a.uds | quote }}
    {{- if $a.listenHost }}
    - --listen
    - {{ printf "%s:%d" $a.listenHost (int $a.port) | quote }}
    {{- end }}
    {{- with $a.auth.tokensSecretName }}
    - --tokens-file
    - {{ printf "/etc/kvtier/agent-tokens/%s" $a.auth.tokensSecretKey | quote }}
    {{- end }}
    {{- if $a.tls.secretName }}
    - --tls-cert
    - /etc/kvtier/agent-tls/tls.crt
    - --tls-key
    - /etc/kvtier/agent-tls/tls.key
    {{- end }}
    - --metrics-listen
    - {{ ternary (printf "%s:%d" $a.metricsHost (int $a.metricsPort)) "off" (ne (toString $a.metricsHost) "") | quote }}
    - --server
    - {{ $endpoint | quote }}
    {{- include "kvtier.cacheClient.args" $client | nindent 4 }}
    {{- if $v.cluster.enabled }}
    - --cluster
    - {{ include "kvtier.clusterUrl" (dict "root" .root "values" $v) | quote }}
    {{- if $a.dataPlane }}
    - --cluster-data-plane
    {{- end }}
    {{- else if or $a.dataPlane $a.cacheDataEndpoint }}
    - --server-data
    - {{ $dataEndpoint | quote }}
    {{- end }}
    - --worker-id
    - {{ default "$(POD_NAME)" $a.workerId | quote }}
    - --block-tokens
    - {{ $a.blockTokens | quote }}
    {{- if $a.seed }}
    - --seed
    - {{ $a.seed | quote }}
    {{- end }}
    {{- with $a.salt }}
    - --salt
    - {{ . | quote }}
    {{- end }}
    {{- with $a.model }}
    - --model
    - {{ . | quote }}
    {{- end }}
    - --staging-bytes
    - {{ $a.stagingBytes | quote }}
    {{- range $a.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    {{- with $a.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if and $a.metricsHost (not (hasPrefix "127." (toString $a.metricsHost))) }}
  ports:
    - name: kvtier-metrics
      containerPort: {{ int $a.metricsPort }}
      protocol: TCP
  {{- end }}
  {{- if and $tcpExposed $a.tls.secretName }}
  {{- /* Kubelet's gRPC probes speak plaintext only: with TLS, probe the port over TCP. */}}
  readinessProbe:
    tcpSocket:
      port: {{ int $a.port }}
    periodSeconds: 5
  livenessProbe:
    tcpSocket:
      port: {{ int $a.port }}
    periodSeconds: 10
    failureThreshold: 6
  {{- else if $tcpExposed }}
  readinessProbe:
    grpc:
      port: {{ int $a.port }}
      service: kvtier.v1.WorkerService
    periodSeconds: 5
  livenessProbe:
    grpc:
      port: {{ int $a.port }}
      service: kvtier.v1.WorkerService
    periodSeconds: 10
    failureThreshold: 6
  {{- end }}
  resources:
    {{- toYaml $a.resources | nindent 4 }}
  securityContext:
    {{- toYaml $a.securityContext | nindent 4 }}
  volumeMounts:
    - name: kvtier-shm
      mountPath: /dev/shm
    {{- if $a.auth.tokensSecretName }}
    - name: kvtier-agent-tokens
      mountPath: /etc/kvtier/agent-tokens
      readOnly: true
    {{- end }}
    {{- if $a.tls.secretName }}
    - name: kvtier-agent-tls
      mountPath: /etc/kvtier/agent-tls
      readOnly: true
    {{- end }}
    {{- include "kvtier.cacheClient.mounts" $client | nindent 4 }}
{{- end }}

{{/* Pod volumes the worker-agent sidecar needs: (dict "root" . "values" .Values.kvtier) */}}
{{- define "kvtier.workerAgent.volumes" -}}
- name: kvtier-shm
  emptyDir:
    medium: Memory
{{- with .values.workerAgent.auth.tokensSecretName }}
- name: kvtier-agent-tokens
  secret:
    secretName: {{ . | quote }}
{{- end }}
{{- with .values.workerAgent.tls.secretName }}
- name: kvtier-agent-tls
  secret:
    secretName: {{ . | quote }}
{{- end }}
{{- include "kvtier.cacheClient.volumes" (dict "values" .values "token" .values.workerAgent.cacheToken) }}
{{- end }}

{{/*
How a kvtier client (router, worker agent) reaches the cache server when it has TLS and/or
tokens: (dict "values" <kvtier values> "token" <the component's cacheToken> "explicit" <true when
the component's cache endpoint was set by hand> "who" "router"|"workerAgent").
"kvtier.cacheClient.args": --server-ca, --server-tls-domain, --server-cert/--server-key,
--server-token-file; ".mounts" and ".volumes" mount the Secrets they name.
*/}}
{{- define "kvtier.cacheClient.check" -}}
{{- $v := .values -}}
{{- $c := $v.cacheClient -}}
{{- if not .explicit -}}
{{- if and $v.cache.tls.enabled (not $c.caSecretName) -}}
{{- fail (printf "cache.tls.enabled: set cacheClient.caSecretName (a Secret with ca.crt, the CA of the cache server's certificate) so that the %s can verify the server" .who) -}}
{{- end -}}
{{- if and $v.cache.tls.clientCASecretName (not $c.clientCertSecretName) -}}
{{- fail (printf "cache.tls.clientCASecretName (mutual TLS): set cacheClient.clientCertSecretName (a kubernetes.io/tls Secret) for the %s's client certificate" .who) -}}
{{- end -}}
{{- if and $v.cache.auth.tokensSecretName (not .token.secretName) -}}
{{- fail (printf "cache.auth.tokensSecretName: set %s.cacheToken.secretName (a Secret holding the %s's bearer token, from kvtier-token new)" .who .who) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{- define "kvtier.cacheClient.args" -}}
{{- $c := .values.cacheClient -}}
{{- if $c.caSecretName }}
- --server-ca
- /etc/kvtier/cache-ca/ca.crt
{{- end }}
{{- with $c.tlsDomain }}
- --server-tls-domain
- {{ . | quote }}
{{- end }}
{{- if $c.clientCertSecretName }}
- --server-cert
- /etc/kvtier/cache-client-cert/tls.crt
- --server-key
- /etc/kvtier/cache-client-cert/tls.key
{{- end }}
{{- if .token.secretName }}
- --server-token-file
- {{ printf "/etc/kvtier/cache-token/%s" .token.secretKey | quote }}
{{- end }}
{{- end }}

{{- define "kvtier.cacheClient.mounts" -}}
{{- $c := .values.cacheClient -}}
{{- if $c.caSecretName }}
- name: kvtier-cache-ca
  mountPath: /etc/kvtier/cache-ca
  readOnly: true
{{- end }}
{{- if $c.clientCertSecretName }}
- name: kvtier-cache-client-cert
  mountPath: /etc/kvtier/cache-client-cert
  readOnly: true
{{- end }}
{{- if .token.secretName }}
- name: kvtier-cache-token
  mountPath: /etc/kvtier/cache-token
  readOnly: true
{{- end }}
{{- end }}

{{- define "kvtier.cacheClient.volumes" -}}
{{- $c := .values.cacheClient -}}
{{- if $c.caSecretName }}
- name: kvtier-cache-ca
  secret:
    secretName: {{ $c.caSecretName }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- if $c.clientCertSecretName }}
- name: kvtier-cache-client-cert
  secret:
    secretName: {{ $c.clientCertSecretName }}
{{- end }}
{{- if .token.secretName }}
- name: kvtier-cache-token
  secret:
    secretName: {{ .token.secretName }}
    items:
      - key: {{ .token.secretKey }}
        path: {{ .token.secretKey }}
{{- end }}
{{- end }}
