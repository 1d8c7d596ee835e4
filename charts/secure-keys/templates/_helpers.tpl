{{/* The chart name, for the app.kubernetes.io/name label. */}}
{{- define "secure-keys.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object's name. */}}
{{- define "secure-keys.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries; pass (dict "ctx" $ "component" "gateway"). */}}
{{- define "secure-keys.labels" -}}
app.kubernetes.io/name: {{ include "secure-keys.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: secure-keys
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/* Selector labels of a component's pods. */}}
{{- define "secure-keys.selectorLabels" -}}
app.kubernetes.io/name: {{ include "secure-keys.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The selector labels as a label selector string (a=b,c=d), for a watch. */}}
{{- define "secure-keys.selector" -}}
{{- $parts := list -}}
{{- range $key, $value := include "secure-keys.selectorLabels" . | fromYaml -}}
{{- $parts = append $parts (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $parts -}}
{{- end -}}

{{- define "secure-keys.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "secure-keys.controllerName" -}}{{ include "secure-keys.fullname" . }}-controller{{- end -}}
{{- define "secure-keys.gatewayName" -}}{{ include "secure-keys.fullname" . }}-gateway{{- end -}}
{{- define "secure-keys.webhookName" -}}{{ include "secure-keys.fullname" . }}-gateway{{- end -}}
{{- define "secure-keys.gatewayTlsSecret" -}}{{ include "secure-keys.fullname" . }}-gateway-tls{{- end -}}
{{- define "secure-keys.kmsConfigName" -}}{{ include "secure-keys.fullname" . }}-kms{{- end -}}

{{/* The KMS configuration file (core/kms/settings.py), as JSON. */}}
{{- define "secure-keys.kmsConfig" -}}
{{- $kms := .Values.kms -}}
{{- $options := dict -}}
{{- if eq $kms.provider "local" -}}
{{- $_ := set $options "keyringPath" (ternary "/etc/secure-keys/kms/keyring.json" "/run/secure-keys/keyring/keyring.json" (ne $kms.local.existingSecret "")) -}}
{{- $_ := set $options "passwordFile" "/etc/secure-keys/kms/password" -}}
{{- else if eq $kms.provider "aws" -}}
{{- with $kms.aws.region }}{{ $_ := set $options "region" . }}{{ end -}}
{{- else if and (eq $kms.provider "azure") $kms.azure.clientId -}}
{{- $_ := set $options "credential" "workload-identity" -}}
{{- else if eq $kms.provider "pkcs11" -}}
{{- $_ := set $options "library" $kms.pkcs11.library -}}
{{- $_ := set $options "tokenLabel" $kms.pkcs11.tokenLabel -}}
{{- $_ := set $options "pinFile" "/etc/secure-keys/kms/pin" -}}
{{- end -}}
{{- range $k, $v := $kms.options }}{{ $_ := set $options $k (toString $v) }}{{ end -}}
{{- $key := dict "provider" $kms.provider "keyId" $kms.keyId "options" $options -}}
{{- dict "default" (dict "provider" $kms.provider "keyId" $kms.keyId) "keys" (list $key) | toPrettyJson -}}
{{- end -}}

{{/* The KMS volume (the config, and the local keyring or the PKCS#11 PIN). */}}
{{- define "secure-keys.kmsVolumes" -}}
- name: kms-config
  configMap:
    name: {{ include "secure-keys.kmsConfigName" . }}
{{- if and (eq .Values.kms.provider "local") .Values.kms.local.existingSecret }}
- name: kms-secret
  secret:
    secretName: {{ .Values.kms.local.existingSecret }}
    defaultMode: 0400
    items:
      - {key: keyring.json, path: keyring.json}
      - {key: password, path: password}
{{- else if eq .Values.kms.provider "local" }}
- name: kms-secret
  secret:
    secretName: {{ include "secure-keys.kmsLocalSecret" . }}
    defaultMode: 0400
- name: keyring
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- else if eq .Values.kms.provider "pkcs11" }}
- name: kms-secret
  secret:
    secretName: {{ required "kms.pkcs11.pinSecret is required with kms.provider=pkcs11" .Values.kms.pkcs11.pinSecret }}
    defaultMode: 0400
    items:
      - {key: pin, path: pin}
{{- end }}
{{- end -}}

{{- define "secure-keys.kmsMounts" -}}
- name: kms-config
  mountPath: /etc/secure-keys/config
  readOnly: true
{{- if or (eq .Values.kms.provider "local") (eq .Values.kms.provider "pkcs11") }}
- name: kms-secret
  mountPath: /etc/secure-keys/kms
  readOnly: true
{{- end }}
{{- if and (eq .Values.kms.provider "local") (not .Values.kms.local.existingSecret) }}
- name: keyring
  mountPath: /run/secure-keys/keyring
{{- end }}
{{- end -}}

{{/* The init container deriving the local keyring from the kept Secret (no existingSecret). */}}
{{- define "secure-keys.keyringInit" -}}
{{- if and (eq .Values.kms.provider "local") (not .Values.kms.local.existingSecret) }}
initContainers:
  - name: keyring
    image: {{ include "secure-keys.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command:
      - python
      - -m
      - secure_keys.controller.keyring
      - --key-id={{ .Values.kms.keyId }}
      - --password-file=/etc/secure-keys/kms/password
      - --salt-file=/etc/secure-keys/kms/salt
      - --created-file=/etc/secure-keys/kms/created
      - --out=/run/secure-keys/keyring/keyring.json
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    resources:
      {{- toYaml .Values.controller.resources | nindent 6 }}
    volumeMounts:
      - name: kms-secret
        mountPath: /etc/secure-keys/kms
        readOnly: true
      - name: keyring
        mountPath: /run/secure-keys/keyring
{{- end }}
{{- end -}}

{{- define "secure-keys.kmsLocalSecret" -}}{{ include "secure-keys.fullname" . }}-kms-local{{- end -}}

{{/* ServiceAccount annotations for the cloud KMS identities, plus the user's. */}}
{{- define "secure-keys.saAnnotations" -}}
{{- $a := dict -}}
{{- with .root.Values.kms.aws.roleArn }}{{ $_ := set $a "eks.amazonaws.com/role-arn" . }}{{ end -}}
{{- with .root.Values.kms.gcp.serviceAccount }}{{ $_ := set $a "iam.gke.io/gcp-service-account" . }}{{ end -}}
{{- with .root.Values.kms.azure.clientId }}{{ $_ := set $a "azure.workload.identity/client-id" . }}{{ end -}}
{{- range $k, $v := .extra }}{{ $_ := set $a $k $v }}{{ end -}}
{{- with $a }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "secure-keys.brokerUrl" -}}
{{- if .Values.gateway.brokerUrl -}}
{{- .Values.gateway.brokerUrl -}}
{{- else -}}
{{- printf "https://%s.%s.svc:%v" (include "secure-keys.gatewayName" .) .Release.Namespace .Values.gateway.servicePort -}}
{{- end -}}
{{- end -}}

{{/* Pod labels a cloud KMS identity needs (AKS workload identity's webhook selects on it). */}}
{{- define "secure-keys.kmsPodLabels" -}}
{{- if and (eq .Values.kms.provider "azure") .Values.kms.azure.clientId }}
azure.workload.identity/use: "true"
{{- end }}
{{- end -}}
