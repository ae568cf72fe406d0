<#
.SYNOPSIS
Stops and removes the modelrelay-server (relay) service that
install-server.ps1 installed.

.DESCRIPTION
Run as Administrator, from this folder. Stopping lets running requests finish
first. The service's folder under %ProgramData%\ModelRelay (logs, and the relay's
state: its API keys and QUIC certificate) is kept unless -RemoveData is
given. The binary itself is left where it is.

.PARAMETER Name
The service's name, as given to install-server.ps1.

.PARAMETER RemoveData
Also delete the service's folder under %ProgramData%\ModelRelay.

.EXAMPLE
.\uninstall-server.ps1
#>
#Requires -RunAsAdministrator
[CmdletBinding()]
param(
    [string] $Name = 'modelrelay-server',
    [switch] $RemoveData
)
Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'
. (Join-Path $PSScriptRoot 'service-common.ps1')

Uninstall-RelayService -Name $Name -RemoveData:$RemoveData
