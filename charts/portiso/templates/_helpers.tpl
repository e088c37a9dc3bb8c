{{/*
Chart name, truncated to 63 characters (a DNS label).
*/}}
{{- define "portiso.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the prefix of every resource name. Kept to 54 characters so that the longest
suffix ("-operator", "-webhook", "-metrics") still fits a 63-character Service name.
*/}}
{{- define "portiso.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
helm.sh/chart label value.
*/}}
{{- define "portiso.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels; call with (dict "ctx" $ "component" "operator").
*/}}
{{- define "portiso.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portiso.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Standard labels; call with (dict "ctx" $ "component" "operator").
*/}}
{{- define "portiso.labels" -}}
helm.sh/chart: {{ include "portiso.chart" .ctx }}
{{ include "portiso.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: portiso
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The image reference: repository, then @digest or :tag (default: the chart's appVersion).
*/}}
{{- define "portiso.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{- define "portiso.operatorServiceAccountName" -}}
{{- default (printf "%s-operator" (include "portiso.fullname" .)) .Values.serviceAccount.operatorName }}
{{- end }}

{{- define "portiso.agentServiceAccountName" -}}
{{- default (printf "%s-agent" (include "portiso.fullname" .)) .Values.serviceAccount.agentName }}
{{- end }}

{{- define "portiso.webhookServiceName" -}}
{{- printf "%s-webhook" (include "portiso.fullname" .) }}
{{- end }}

{{- define "portiso.leaseName" -}}
{{- default (printf "%s-operator" (include "portiso.fullname" .)) .Values.operator.leaseName }}
{{- end }}

{{/*
The agent's socket path, from its host directory.
*/}}
{{- define "portiso.agentSocket" -}}
{{- printf "%s/agent.sock" (trimSuffix "/" .Values.agent.socketDir) }}
{{- end }}

{{/*
One uplink list as agent-config YAML, with the keys the agent knows (name, bridge, address,
gateway). Fails on repeated names or bridges. Call with (dict "uplinks" $list "where" "agent.uplinks").
*/}}
{{- define "portiso.uplinks" -}}
{{- $names := dict }}
{{- $bridges := dict }}
{{- range $i, $u := .uplinks }}
{{- if not $u.name }}
{{- fail (printf "%s[%d]: every uplink needs a name (the NIC, e.g. eth1)" $.where $i) }}
{{- end }}
{{- $bridge := default (printf "br-%s" $u.name) $u.bridge }}
{{- if hasKey $names $u.name }}
{{- fail (printf "%s[%d]: uplink %q is listed twice" $.where $i $u.name) }}
{{- end }}
{{- if hasKey $bridges $bridge }}
{{- fail (printf "%s[%d]: bridge %q is used by two uplinks" $.where $i $bridge) }}
{{- end }}
{{- $_ := set $names $u.name true }}
{{- $_ := set $bridges $bridge true }}
- name: {{ $u.name | quote }}
  {{- with $u.bridge }}
  bridge: {{ . | quote }}
  {{- end }}
  {{- with $u.address }}
  address: {{ . | quote }}
  {{- end }}
  {{- with $u.gateway }}
  gateway: {{ . | quote }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
agent.fastPath as the agent config spells it: auto, on or off. An unquoted on/off in a values
file reaches the chart as a YAML 1.1 boolean, so true/false are taken as on/off.
*/}}
{{- define "portiso.fastPath" -}}
{{- $v := .Values.agent.fastPath }}
{{- if kindIs "bool" $v }}
{{- ternary "on" "off" $v }}
{{- else }}
{{- $v }}
{{- end }}
{{- end }}
