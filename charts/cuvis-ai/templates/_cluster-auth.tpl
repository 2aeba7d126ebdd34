{{/*
The cluster credential (values clusterAuth): gateways send it with every call to a worker and workers
accept only calls that carry it. Both read it from the same Secret, mounted as a file
(CUVIS_CLUSTER_TOKEN_FILE).
*/}}

{{- define "cuvis.clusterTokenSecret" -}}
{{- default (include "cuvis.componentName" (dict "ctx" . "component" "cluster-token")) .Values.clusterAuth.existingSecret -}}
{{- end -}}

{{- define "cuvis.clusterTokenEnv" -}}
{{- if .Values.clusterAuth.enabled }}
- name: CUVIS_CLUSTER_TOKEN_FILE
  value: {{ printf "/etc/cuvis/cluster-token/%s" .Values.clusterAuth.key | quote }}
{{- end }}
{{- end -}}

{{- define "cuvis.clusterTokenMount" -}}
{{- if .Values.clusterAuth.enabled }}
- name: cluster-token
  mountPath: /etc/cuvis/cluster-token
  readOnly: true
{{- end }}
{{- end -}}

{{- define "cuvis.clusterTokenVolume" -}}
{{- if .Values.clusterAuth.enabled }}
- name: cluster-token
  secret:
    secretName: {{ include "cuvis.clusterTokenSecret" . }}
    # 0440: readable by the pod's fsGroup, which the servers run in, and nobody else.
    defaultMode: 288
{{- end }}
{{- end -}}
