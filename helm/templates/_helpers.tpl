{{- define "bme.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bme.fullname" -}}
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

{{- define "bme.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bme.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "bme.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "bme.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bitbucket-mirror-exporter
{{- end -}}

{{- define "bme.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "bme.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "bme.secretName" -}}
{{- default (include "bme.fullname" .) .Values.existingSecret.name -}}
{{- end -}}

{{/* A mirror's jmx block that reads over JMX (jmxquery, a JVM), not from jmx_exporter pages. */}}
{{- define "bme.overJmx" -}}
{{- if and . (not .exporter_url_template) (not .mesh_exporter_url_template) -}}true{{- end -}}
{{- end -}}

{{/* Non-empty when a mirror in the configuration reads over JMX, so the image needs a Java runtime. */}}
{{- define "bme.jmx" -}}
{{- range .Values.config.mirrors -}}{{- include "bme.overJmx" .jmx -}}{{- end -}}
{{- end -}}

{{- define "bme.image" -}}
{{- $repository := required "image.repository is required: no public image is published yet; build it (README, Container image) and push it to your registry" .Values.image.repository -}}
{{- $tag := .Values.image.tag | default (printf "%s%s" .Chart.AppVersion (ternary "-jmx" "" (ne (include "bme.jmx" .) ""))) -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}

{{- define "bme.secretDir" -}}/etc/bitbucket-mirror-exporter/secrets{{- end -}}

{{/* (list $ "password"): the Secret's key holding that secret, or "" when there is none. */}}
{{- define "bme.secretKey" -}}
{{- $root := index . 0 -}}
{{- $what := index . 1 -}}
{{- if $root.Values.existingSecret.name -}}
{{- index $root.Values.existingSecret (printf "%sKey" $what) -}}
{{- else if index $root.Values.credentials $what -}}
{{- $what -}}
{{- end -}}
{{- end -}}

{{- define "bme.anySecret" -}}
{{- range list "password" "token" "jmxPassword" -}}{{- include "bme.secretKey" (list $ .) -}}{{- end -}}
{{- if .Values.existingSecret.name -}}{{- range $name, $key := .Values.existingSecret.mirrorPasswordKeys -}}{{ $key }}{{- end -}}{{- end -}}
{{- end -}}

{{/* (list $text $settings): $text with every __BME_<setting>__ replaced by the setting's value. */}}
{{- define "bme.fill" -}}
{{- $text := index . 0 -}}
{{- range $key, $value := index . 1 -}}
{{- $text = replace (printf "__BME_%s__" $key) (toString $value) $text -}}
{{- end -}}
{{- $text -}}
{{- end -}}

{{/* Where people reach the exporter (--web.external-url): webExternalUrl, else the Ingress host, else its Service
in the cluster. */}}
{{- define "bme.externalUrl" -}}
{{- if .Values.webExternalUrl -}}
{{- .Values.webExternalUrl | trimSuffix "/" -}}
{{- else if and .Values.ingress.enabled .Values.ingress.host -}}
{{- printf "%s://%s" (ternary "https" "http" (not (empty .Values.ingress.tlsSecretName))) .Values.ingress.host -}}
{{- else -}}
{{- printf "http://%s.%s.svc:%v" (include "bme.fullname" .) .Release.Namespace .Values.service.port -}}
{{- end -}}
{{- end -}}

{{/* The alerts' runbook base: prometheusRule.runbookUrl, else the exporter's own /runbooks at its external URL. */}}
{{- define "bme.runbookUrl" -}}
{{- .Values.prometheusRule.runbookUrl | default (printf "%s/runbooks" (include "bme.externalUrl" .)) -}}
{{- end -}}

{{- define "bme.caDir" -}}/etc/bitbucket-mirror-exporter/ca{{- end -}}
{{- define "bme.webDir" -}}/etc/bitbucket-mirror-exporter/web{{- end -}}
{{- define "bme.webTlsDir" -}}/etc/bitbucket-mirror-exporter/web-tls{{- end -}}

{{/* The exporter configuration: .Values.config with the *_file keys pointed at the mounted Secret. */}}
{{- define "bme.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $dir := include "bme.secretDir" . -}}
{{- $primary := $config.primary | default dict -}}
{{- if include "bme.secretKey" (list . "password") -}}
{{- $_ := set $primary "password_file" (printf "%s/password" $dir) -}}
{{- end -}}
{{- if include "bme.secretKey" (list . "token") -}}
{{- $_ := set $primary "token_file" (printf "%s/token" $dir) -}}
{{- end -}}
{{- $_ := set $config "primary" $primary -}}
{{- if .Values.existingSecret.name -}}
{{- range $config.mirrors -}}
{{- if hasKey $.Values.existingSecret.mirrorPasswordKeys .name -}}
{{- $_ := set . "password_file" (printf "%s/mirror-%s-password" $dir .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if .Values.tls.caSecret.name -}}
{{- $tls := $config.tls | default dict -}}
{{- if not $tls.ca_file -}}
{{- $_ := set $tls "ca_file" (printf "%s/%s" (include "bme.caDir" .) .Values.tls.caSecret.key) -}}
{{- end -}}
{{- $_ := set $config "tls" $tls -}}
{{- end -}}
{{- if include "bme.secretKey" (list . "jmxPassword") -}}
{{- range $config.mirrors -}}
{{- if and (include "bme.overJmx" .jmx) (not (hasKey .jmx "password")) (not (hasKey .jmx "password_file")) -}}
{{- $_ := set .jmx "password_file" (printf "%s/jmxPassword" $dir) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}
