{{- define "flywheel.labels" -}}
app.kubernetes.io/part-of: flywheel
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{- define "flywheel.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{/* The proxy container. Include it in a pod spec: native sidecar under initContainers,
     or a plain container (sidecar.native=false) under containers. */}}
{{- define "flywheel.sidecar" -}}
- name: flywheel
  image: {{ include "flywheel.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  # Listens on the pod's addresses so that kubelet probes and Prometheus reach /readyz and
  # /metrics; the NetworkPolicy keeps the API port to the pod and the monitoring namespace.
  args: ["proxy", "--host", "0.0.0.0", "--port", "{{ .Values.sidecar.port }}", "--upstream", "{{ .Values.sidecar.upstream }}",
         "--registry", "/etc/flywheel/registry", "--capture-content", "{{ .Values.sidecar.captureContent }}",
         "--drain-timeout", "{{ .Values.sidecar.drainSeconds }}"]
  env:
    - name: FLYWHEEL_UPSTREAM_API_KEY
      valueFrom:
        secretKeyRef: {name: {{ .Values.sidecar.providerKeySecret.name }}, key: {{ .Values.sidecar.providerKeySecret.key }}}
    - name: OTEL_EXPORTER_OTLP_ENDPOINT
      value: {{ .Values.sidecar.otlpEndpoint | quote }}
    - name: OTEL_SERVICE_NAME
      value: flywheel-proxy
    {{- with .Values.sidecar.env }}{{ toYaml . | nindent 4 }}{{ end }}
  ports:
    - {name: flywheel, containerPort: {{ .Values.sidecar.port }}}
  startupProbe:
    httpGet: {path: /healthz, port: {{ .Values.sidecar.port }}}
    periodSeconds: 1
    failureThreshold: 30
  livenessProbe:
    httpGet: {path: /healthz, port: {{ .Values.sidecar.port }}}
    periodSeconds: 10
  readinessProbe:
    httpGet: {path: /readyz, port: {{ .Values.sidecar.port }}}
    periodSeconds: 5
  lifecycle:
    preStop:
      exec: {command: ["sleep", "5"]}  # let endpoints drop the pod before the drain starts
  volumeMounts:
    - {name: flywheel-registry, mountPath: /etc/flywheel/registry, readOnly: true}
  securityContext: {runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
  resources: {{- toYaml .Values.sidecar.resources | nindent 4 }}
{{- end }}
