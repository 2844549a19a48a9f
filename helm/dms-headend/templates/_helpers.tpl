{{/*
Names, labels and the checks every template runs. Names are cut to 63 characters (DNS label).
*/}}

{{- define "dms-headend.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name: the release name when it already contains the chart name, else release-chart.
*/}}
{{- define "dms-headend.fullname" -}}
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

{{- define "dms-headend.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dms-headend.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dms-headend.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dms-headend.labels" -}}
helm.sh/chart: {{ include "dms-headend.chart" . }}
{{ include "dms-headend.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dms-headend
{{- end -}}

{{/* Selector of the API pods (component server). */}}
{{- define "dms-headend.serverSelectorLabels" -}}
{{ include "dms-headend.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end -}}

{{/* Name of the RayCluster; KubeRay names its head Service <name>-head-svc. Kept short for KubeRay's own suffixes. */}}
{{- define "dms-headend.rayClusterName" -}}
{{- printf "%s-ray" (include "dms-headend.fullname" . | trunc 40 | trimSuffix "-") -}}
{{- end -}}

{{- define "dms-headend.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dms-headend.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "dms-headend.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "dms-headend.rayImage" -}}
{{- if .Values.ray.image.repository -}}
{{- printf "%s:%s" .Values.ray.image.repository (default .Chart.AppVersion .Values.ray.image.tag) -}}
{{- else -}}
{{- include "dms-headend.image" . -}}
{{- end -}}
{{- end -}}

{{/* Bolt host of the Neo4j subchart: the official chart's fullname rule with our nameOverride. */}}
{{- define "dms-headend.neo4jSubchartHost" -}}
{{- $n := .Values.neo4j -}}
{{- if $n.fullnameOverride -}}
{{- $n.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if $n.nameOverride -}}
{{- if contains $n.nameOverride .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $n.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- else -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dms-headend.neo4jUri" -}}
{{- if .Values.neo4j.enabled -}}
{{- printf "neo4j://%s.%s.svc:7687" (include "dms-headend.neo4jSubchartHost" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.externalNeo4j.uri -}}
{{- end -}}
{{- end -}}

{{- define "dms-headend.neo4jUser" -}}
{{- if .Values.neo4j.enabled -}}{{ .Values.neo4j.user }}{{- else -}}{{ .Values.externalNeo4j.user }}{{- end -}}
{{- end -}}

{{- define "dms-headend.neo4jSecret" -}}
{{- if .Values.neo4j.enabled -}}{{ .Values.neo4j.existingSecret }}{{- else -}}{{ .Values.externalNeo4j.existingSecret }}{{- end -}}
{{- end -}}

{{- define "dms-headend.neo4jSecretKey" -}}
{{- if .Values.neo4j.enabled -}}{{ .Values.neo4j.existingSecretPasswordKey }}{{- else -}}{{ .Values.externalNeo4j.existingSecretPasswordKey }}{{- end -}}
{{- end -}}

{{- define "dms-headend.rayAddress" -}}
{{- if .Values.ray.enabled -}}
{{- printf "ray://%s-head-svc.%s.svc:10001" (include "dms-headend.rayClusterName" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.ray.externalAddress -}}
{{- end -}}
{{- end -}}

{{/*
Cross-field checks. Each failure names the fix. Included once, from configmap.yaml.
*/}}
{{- define "dms-headend.validate" -}}
{{- $v := .Values -}}
{{- if $v.externalNeo4j.password -}}
{{- fail "externalNeo4j.password is set: inline passwords end up in the release history. Remove it, create a Secret (kubectl create secret generic dms-neo4j --from-literal=password=...) and set externalNeo4j.existingSecret=dms-neo4j" -}}
{{- end -}}
{{- if and $v.neo4j.enabled (or (index $v.neo4j "password") (and (index $v.neo4j "neo4j") (index (index $v.neo4j "neo4j") "password"))) -}}
{{- fail "neo4j.neo4j.password is set: inline passwords end up in the release history. Remove it, create a Secret holding NEO4J_AUTH=neo4j/<password> and password=<password>, and set neo4j.existingSecret and neo4j.neo4j.passwordFromSecret to its name" -}}
{{- end -}}
{{- if and (not $v.neo4j.enabled) (not $v.externalNeo4j.uri) -}}
{{- fail "neo4j.enabled is false and externalNeo4j.uri is empty: set externalNeo4j.uri (e.g. neo4j+s://neo4j.graph.svc:7687) or set neo4j.enabled=true to deploy Neo4j with this release" -}}
{{- end -}}
{{- if and $v.neo4j.enabled (not $v.neo4j.existingSecret) -}}
{{- fail "neo4j.enabled is true but neo4j.existingSecret is empty: create a Secret holding NEO4J_AUTH=neo4j/<password> and password=<password>, then set neo4j.existingSecret and neo4j.neo4j.passwordFromSecret to its name" -}}
{{- end -}}
{{- if and (not $v.neo4j.enabled) (not $v.externalNeo4j.existingSecret) -}}
{{- fail "externalNeo4j.existingSecret is empty: create a Secret with the Neo4j password (kubectl create secret generic dms-neo4j --from-literal=password=...) and set externalNeo4j.existingSecret=dms-neo4j" -}}
{{- end -}}
{{- if and (not $v.auth.jwksUrl) (not $v.auth.existingSecret) -}}
{{- fail "auth.jwksUrl and auth.existingSecret are both empty: set auth.jwksUrl to your OIDC provider's JWKS URL (or auth.existingSecret to a Secret holding the JWKS document) and auth.issuer to its issuer" -}}
{{- end -}}
{{- if not $v.auth.issuer -}}
{{- fail "auth.issuer is empty: set it to the `iss` your OIDC provider puts in tokens (e.g. https://login.example.com/realms/grid)" -}}
{{- end -}}
{{- if and $v.ray.enabled (not $v.ray.auth.existingSecret) -}}
{{- fail "ray.auth.existingSecret is empty: Ray without token authentication runs code for anyone who reaches it. Create a Secret (kubectl create secret generic dms-ray-token --from-literal=token=$(openssl rand -hex 32)) and set ray.auth.existingSecret=dms-ray-token" -}}
{{- end -}}
{{- if and (gt (int $v.replicaCount) 1) (not $v.audit.existingSecret) -}}
{{- fail (printf "audit.existingSecret is empty with replicaCount %d: every API replica appends to one audit chain and must sign it with the same HMAC key (DMS_AUDIT_KEY_FILE). Create a Secret once (kubectl create secret generic dms-audit-key --from-literal=audit.key=$(openssl rand -hex 32)) and set audit.existingSecret=dms-audit-key, or set replicaCount=1" (int $v.replicaCount)) -}}
{{- end -}}
{{- if and (not $v.ray.enabled) (not $v.ray.externalAddress) -}}
{{- fail "ray.enabled is false and ray.externalAddress is empty: set ray.externalAddress (e.g. ray://ray-head.ray.svc:10001) or set ray.enabled=true to create a RayCluster" -}}
{{- end -}}
{{- if and $v.ray.enabled (gt (int $v.ray.worker.minReplicas) (int $v.ray.worker.maxReplicas)) -}}
{{- fail "ray.worker.minReplicas is greater than ray.worker.maxReplicas: lower minReplicas or raise maxReplicas" -}}
{{- end -}}
{{- if and $v.podDisruptionBudget.enabled (eq (int $v.replicaCount) 0) -}}
{{- fail "podDisruptionBudget.enabled is true with replicaCount 0: a PDB over no pods blocks node drains. Set replicaCount to 2 or more, or podDisruptionBudget.enabled=false" -}}
{{- end -}}
{{- if and (or $v.podDisruptionBudget.enabled (gt (int $v.replicaCount) 1)) (ge (int $v.podDisruptionBudget.minAvailable) (int $v.replicaCount)) (gt (int $v.replicaCount) 0) -}}
{{- fail (printf "podDisruptionBudget.minAvailable (%d) is not below replicaCount (%d): no pod could ever be evicted. Lower podDisruptionBudget.minAvailable or raise replicaCount" (int $v.podDisruptionBudget.minAvailable) (int $v.replicaCount)) -}}
{{- end -}}
{{- if and $v.ingress.enabled $v.ingress.tls.enabled (not $v.ingress.tls.secretName) -}}
{{- fail "ingress.tls.enabled is true but ingress.tls.secretName is empty: set ingress.tls.secretName to a kubernetes.io/tls Secret for ingress.host (cert-manager can create it), or set ingress.tls.enabled=false" -}}
{{- end -}}
{{- if and (or $v.historian.s3.existingSecret $v.historian.s3.endpoint) (not (hasPrefix "s3://" $v.historian.uri)) -}}
{{- fail "historian.s3 is set but historian.uri is not an s3:// URI: set historian.uri=s3://<bucket>/<prefix>, or empty historian.s3.existingSecret and historian.s3.endpoint to keep the historian local" -}}
{{- end -}}
{{- if and $v.historian.s3.endpoint (contains "endpoint_override=" $v.historian.uri) -}}
{{- fail "historian.uri has endpoint_override= and historian.s3.endpoint is set: give the endpoint once, in historian.s3.endpoint (remove endpoint_override and scheme from historian.uri)" -}}
{{- end -}}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled is true but metrics.enabled is false: set metrics.enabled=true (so Prometheus may reach /metrics) or metrics.serviceMonitor.enabled=false" -}}
{{- end -}}
{{- end -}}

{{/* Security context of every container: the restricted Pod Security profile. */}}
{{- define "dms-headend.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "dms-headend.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Ray token auth: env of every Ray process and of the Ray client. */}}
{{- define "dms-headend.rayAuthEnv" -}}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN_PATH
  value: /etc/dms/ray/token
{{- end -}}

{{/* The historian's root with historian.s3.endpoint folded in (the historian reads the endpoint
from the URI: endpoint_override and scheme). */}}
{{- define "dms-headend.historianUri" -}}
{{- $h := .Values.historian -}}
{{- if $h.s3.endpoint -}}
{{- $e := urlParse $h.s3.endpoint -}}
{{- printf "%s%sendpoint_override=%s&scheme=%s" $h.uri (ternary "&" "?" (contains "?" $h.uri)) $e.host $e.scheme -}}
{{- else -}}
{{- $h.uri -}}
{{- end -}}
{{- end -}}

{{/* S3 credentials of the historian (API and Ray worker pods), from an existing Secret. */}}
{{- define "dms-headend.historianEnv" -}}
{{- $s3 := .Values.historian.s3 -}}
{{- if $s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $s3.existingSecret }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s3.existingSecret }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- if $s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ $s3.endpoint | quote }}
{{- end }}
{{- end -}}

{{/* Egress shared by the API and Ray pods: DNS, Neo4j, field networks. */}}
{{- define "dms-headend.egressCommon" -}}
{{- $np := .Values.networkPolicy -}}
# DNS.
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
# Neo4j over Bolt.
{{- if .Values.neo4j.enabled }}
- to:
    - podSelector:
        matchLabels:
          helm.neo4j.com/instance: {{ include "dms-headend.neo4jSubchartHost" . | quote }}
  ports:
    - port: 7687
      protocol: TCP
{{- else }}
- ports:
    - port: {{ .Values.externalNeo4j.port }}
      protocol: TCP
  {{- with .Values.externalNeo4j.cidrs }}
  to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  {{- end }}
{{- end }}
{{- with $np.egress.fieldNetworks }}
# Field devices: Modbus TCP and OPC UA.
- to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    - port: {{ $np.egress.modbusPort }}
      protocol: TCP
    - port: {{ $np.egress.opcuaPort }}
      protocol: TCP
{{- end }}
{{- end }}
