{{- define "tokenwarden.labels" -}}
app.kubernetes.io/name: tokenwarden
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "tokenwarden.selector" -}}
app.kubernetes.io/name: tokenwarden
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tokenwarden.etcdEndpoints" -}}
{{- if .Values.etcd.deploy -}}
http://{{ .Release.Name }}-etcd-0.{{ .Release.Name }}-etcd.{{ .Release.Namespace }}.svc:2379
{{- else -}}
{{- required "etcd.endpoints is required (or set etcd.deploy=true to try it out)" (join "," .Values.etcd.endpoints) -}}
{{- end -}}
{{- end }}

{{- /* TLS (values tls.*): the Secret the listeners serve from, "" when plain. */ -}}
{{- define "tokenwarden.tlsSecret" -}}
{{- if .Values.tls.certManager.enabled -}}
{{- .Values.tls.secretName | default (printf "%s-tls" .Release.Name) -}}
{{- else -}}
{{- .Values.tls.secretName -}}
{{- end -}}
{{- end }}

{{- /* The address a listener binds: "loopback" or "pod" (listeners.*). */ -}}
{{- define "tokenwarden.bind" -}}
{{- if eq .where "loopback" -}}127.0.0.1:{{ .port }}
{{- else if eq .where "pod" -}}$(POD_IP):{{ .port }}
{{- else -}}{{ fail (printf "listeners.%s: want loopback or pod, not %q" .name .where) }}
{{- end -}}
{{- end }}
