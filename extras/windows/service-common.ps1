# service-common.ps1: what install-worker.ps1, install-server.ps1 and their
# uninstall scripts share. Dot-sourced by them; not run by itself.
#
# Why a wrapper: a Windows service's program must answer the Service Control
# Manager (StartServiceCtrlDispatcher, then SetServiceStatus), or the SCM
# kills it about 30 s after the start (error 1053). modelrelay-server and
# modelrelay-worker are console programs and do not speak that protocol, so
# the service runs WinSW 2.x, the Windows Service Wrapper (winsw/winsw on
# GitHub; you download it), which does, and which starts the binary, writes
# its output to log files, and on a stop sends it Ctrl+C: the binaries drain
# on Ctrl+C as on SIGTERM. If the binary exits on its own with an error, WinSW
# exits with the same code without telling the SCM it stopped, so the SCM
# applies the service's recovery actions (restart).
#
# What goes where, for a service named NAME:
#   %ProgramFiles%\ModelRelay\NAME\NAME.exe   the WinSW copy, and NAME.xml, its
#                                             settings (written here)
#   %ProgramData%\ModelRelay\NAME\            the service's own folder: logs\,
#                                             and the settings or state of the
#                                             binary; only SYSTEM, the
#                                             Administrators and the service
#                                             may open it
#   HKLM\SYSTEM\CurrentControlSet\Services\NAME, value Environment
#                                             (REG_MULTI_SZ) the variables the
#                                             SCM gives the service; the key
#                                             is made readable by SYSTEM and
#                                             the Administrators alone, since
#                                             the variables may hold a secret
# The service runs as its own virtual account, NT SERVICE\NAME, with no
# password and no rights beyond those folders (like systemd's DynamicUser).

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'

# SIDs, not names, so that a Windows in another language finds them.
$script:LocalSystemSid = 'S-1-5-18'
$script:AdministratorsSid = 'S-1-5-32-544'
# Restart 5 s after the first and second failures, 30 s after later ones; the
# count starts over after a day without failures.
$script:RecoveryActions = 'restart/5000/restart/5000/restart/30000'
$script:RecoveryResetSeconds = 86400
# Each log file is rolled at 10 MiB (in KiB, as WinSW counts), 8 kept.
$script:LogRollKiB = 10240
$script:LogFilesKept = 8

# The service's key in the registry.
function Get-ServiceKeyPath {
    param([Parameter(Mandatory)] [string] $Name)
    return "HKLM:\SYSTEM\CurrentControlSet\Services\$Name"
}

# The folder holding the WinSW copy and its XML for service $Name.
function Get-WrapperFolder {
    param([Parameter(Mandatory)] [string] $Name)
    return Join-Path $env:ProgramFiles "ModelRelay\$Name"
}

# The service's own folder: logs, settings, state.
function Get-ServiceFolder {
    param([Parameter(Mandatory)] [string] $Name)
    return Join-Path $env:ProgramData "ModelRelay\$Name"
}

# Runs sc.exe with exactly this command line and stops the script if it fails.
# Start-Process passes the string as it is, so quotes inside reach sc.exe the
# same way from Windows PowerShell 5.1 and from PowerShell 7.
function Invoke-Sc {
    param([Parameter(Mandatory)] [string] $Arguments)
    $sc = Join-Path $env:SystemRoot 'System32\sc.exe'
    $process = Start-Process -FilePath $sc -ArgumentList $Arguments -NoNewWindow -Wait -PassThru
    if ($process.ExitCode -ne 0) {
        throw "sc.exe $Arguments failed with exit code $($process.ExitCode)"
    }
}

# Runs icacls.exe with these arguments and stops the script if it fails. Its
# error messages go to the console as they come: redirected, Windows
# PowerShell 5.1 would turn the first one into an exception of its own.
function Invoke-Icacls {
    param([Parameter(Mandatory)] [string[]] $Arguments)
    $null = & (Join-Path $env:SystemRoot 'System32\icacls.exe') @Arguments
    if ($LASTEXITCODE -ne 0) {
        throw "icacls.exe $($Arguments -join ' ') failed with exit code $LASTEXITCODE"
    }
}

# Lets only SYSTEM, the Administrators and, if given, $Account open $Path (a
# folder and what it holds, or one file), nothing inherited from above. The
# Administrators become its owner first: %ProgramData% lets any user create a
# folder, and whoever created one could otherwise change its access again.
# $Rights is icacls' letter for $Account: M (modify) or R (read).
function Set-PrivateAccess {
    param(
        [Parameter(Mandatory)] [string] $Path,
        [string] $Account,
        [ValidateSet('M', 'R')] [string] $Rights = 'R'
    )
    Invoke-Icacls -Arguments @($Path, '/setowner', "*$($script:AdministratorsSid)", '/T')
    $inherit = if (Test-Path -LiteralPath $Path -PathType Container) { '(OI)(CI)' } else { '' }
    $grants = @(
        "*$($script:LocalSystemSid):$($inherit)F",
        "*$($script:AdministratorsSid):$($inherit)F"
    )
    if ($Account) {
        $grants += "$($Account):$($inherit)$Rights"
    }
    Invoke-Icacls -Arguments (@($Path, '/inheritance:r', '/grant:r') + $grants)
}

# The VAR=value lines of an env file (the format of extras/env/*.env.example):
# blank lines and lines starting with # are skipped, anything else must be
# VAR=value.
function Read-EnvFile {
    param([Parameter(Mandatory)] [string] $Path)
    $entries = [System.Collections.Generic.List[string]]::new()
    $number = 0
    foreach ($line in Get-Content -LiteralPath $Path) {
        $number++
        $text = $line.Trim()
        if ($text -eq '' -or $text.StartsWith('#')) {
            continue
        }
        if ($text -notmatch '^[A-Za-z_][A-Za-z0-9_]*=') {
            throw "$($Path):$($number): not a VAR=value line: $text"
        }
        $entries.Add($text)
    }
    return $entries.ToArray()
}

# $Entries (VAR=value strings) with VAR=value added for each of $Defaults
# (name to value, in order) whose variable $Entries does not set yet.
function Add-DefaultVariables {
    param(
        [string[]] $Entries = @(),
        [Parameter(Mandatory)] [System.Collections.IDictionary] $Defaults
    )
    $all = [System.Collections.Generic.List[string]]::new()
    foreach ($entry in $Entries) {
        $all.Add($entry)
    }
    foreach ($name in $Defaults.Keys) {
        $isSet = $Entries | Where-Object { $_.StartsWith("$name=", [System.StringComparison]::OrdinalIgnoreCase) }
        if (-not $isSet) {
            $all.Add("$name=$($Defaults[$name])")
        }
    }
    return $all.ToArray()
}

# Writes the service's Environment value, which the SCM gives the service's
# process (WinSW passes it on to the binary), and lets only SYSTEM and the
# Administrators read the service's key: the value may hold a secret.
function Set-ServiceEnvironment {
    param(
        [Parameter(Mandatory)] [string] $Name,
        [Parameter(Mandatory)] [string[]] $Entries
    )
    $key = Get-ServiceKeyPath -Name $Name
    New-ItemProperty -LiteralPath $key -Name 'Environment' -PropertyType MultiString -Value $Entries -Force | Out-Null
    $acl = [System.Security.AccessControl.RegistrySecurity]::new()
    $acl.SetAccessRuleProtection($true, $false)
    foreach ($sid in @($script:LocalSystemSid, $script:AdministratorsSid)) {
        $rule = [System.Security.AccessControl.RegistryAccessRule]::new(
            [System.Security.Principal.SecurityIdentifier]::new($sid),
            [System.Security.AccessControl.RegistryRights]::FullControl,
            [System.Security.AccessControl.InheritanceFlags]::ContainerInherit,
            [System.Security.AccessControl.PropagationFlags]::None,
            [System.Security.AccessControl.AccessControlType]::Allow)
        $acl.AddAccessRule($rule)
    }
    Set-Acl -LiteralPath $key -AclObject $acl
}

# WinSW's settings for the service: what to run, where its logs go, how long
# a stop may take before the binary is killed.
function Get-WrapperXml {
    param(
        [Parameter(Mandatory)] [string] $Name,
        [Parameter(Mandatory)] [string] $Description,
        [Parameter(Mandatory)] [string] $Binary,
        [string] $Arguments = '',
        [Parameter(Mandatory)] [string] $ServiceFolder,
        [Parameter(Mandatory)] [int] $StopTimeoutSeconds
    )
    $escape = { param($text) [System.Security.SecurityElement]::Escape($text) }
    return @"
<service>
  <id>$(& $escape $Name)</id>
  <name>$(& $escape $Name)</name>
  <description>$(& $escape $Description)</description>
  <executable>$(& $escape $Binary)</executable>
  <arguments>$(& $escape $Arguments)</arguments>
  <workingdirectory>$(& $escape $ServiceFolder)</workingdirectory>
  <logpath>$(& $escape (Join-Path $ServiceFolder 'logs'))</logpath>
  <log mode="roll-by-size">
    <sizeThreshold>$($script:LogRollKiB)</sizeThreshold>
    <keepFiles>$($script:LogFilesKept)</keepFiles>
  </log>
  <stoptimeout>$StopTimeoutSeconds sec</stoptimeout>
</service>
"@
}

# Stops service $Name if it runs; Stop-Service waits for the drain to end.
function Stop-RelayService {
    param([Parameter(Mandatory)] [string] $Name)
    $service = Get-Service -Name $Name -ErrorAction SilentlyContinue
    if ($service -and $service.Status -ne 'Stopped') {
        Write-Host "Stopping $Name (running requests may take a while to finish)"
        Stop-Service -Name $Name -Force
    }
}

# Registers (or, if it exists, updates) service $Name: WinSW from
# $WrapperExe runs $Binary $Arguments as NT SERVICE\$Name, started at boot,
# with the environment $Environment, restarted on failure. $Prepare runs
# between creating the service (its account, and its folder, then exist) and
# starting it, to put the binary's own files there.
function Install-RelayService {
    param(
        [Parameter(Mandatory)] [string] $Name,
        [Parameter(Mandatory)] [string] $Description,
        [Parameter(Mandatory)] [string] $WrapperExe,
        [Parameter(Mandatory)] [string] $Binary,
        [string] $Arguments = '',
        [Parameter(Mandatory)] [string[]] $Environment,
        [Parameter(Mandatory)] [int] $StopTimeoutSeconds,
        [scriptblock] $Prepare
    )
    foreach ($file in @($WrapperExe, $Binary)) {
        if (-not (Test-Path -LiteralPath $file -PathType Leaf)) {
            throw "no such file: $file"
        }
    }
    $account = "NT SERVICE\$Name"
    $wrapperFolder = Get-WrapperFolder -Name $Name
    $serviceFolder = Get-ServiceFolder -Name $Name
    $wrapper = Join-Path $wrapperFolder "$Name.exe"
    $hash = (Get-FileHash -LiteralPath $WrapperExe -Algorithm SHA256).Hash
    Write-Host "WinSW: $WrapperExe, SHA-256 $hash (compare it with the one its release lists)"

    Stop-RelayService -Name $Name
    New-Item -ItemType Directory -Force -Path $wrapperFolder | Out-Null
    Copy-Item -LiteralPath $WrapperExe -Destination $wrapper -Force
    $xml = Get-WrapperXml -Name $Name -Description $Description -Binary $Binary -Arguments $Arguments `
        -ServiceFolder $serviceFolder -StopTimeoutSeconds $StopTimeoutSeconds
    Set-Content -LiteralPath (Join-Path $wrapperFolder "$Name.xml") -Value $xml -Encoding UTF8

    if (Get-Service -Name $Name -ErrorAction SilentlyContinue) {
        Invoke-Sc "config `"$Name`" binPath= `"\`"$wrapper\`"`" start= auto"
    } else {
        Invoke-Sc "create `"$Name`" binPath= `"\`"$wrapper\`"`" start= auto DisplayName= `"$Name`""
    }
    Invoke-Sc "config `"$Name`" obj= `"$account`""
    Invoke-Sc "description `"$Name`" `"$Description`""
    Invoke-Sc "failure `"$Name`" reset= $($script:RecoveryResetSeconds) actions= $($script:RecoveryActions)"
    # Also count a stop with an error exit code as a failure, not only a crash.
    Invoke-Sc "failureflag `"$Name`" 1"
    Set-ServiceEnvironment -Name $Name -Entries $Environment

    $root = Split-Path -Parent $serviceFolder
    New-Item -ItemType Directory -Force -Path $root | Out-Null
    Set-PrivateAccess -Path $root
    New-Item -ItemType Directory -Force -Path (Join-Path $serviceFolder 'logs') | Out-Null
    Set-PrivateAccess -Path $serviceFolder -Account $account -Rights 'M'
    if ($Prepare) {
        & $Prepare
    }
    Register-EventSource -Name $Name

    Start-Service -Name $Name
    Get-Service -Name $Name | Format-Table -AutoSize -Property 'Name', 'Status', 'StartType'
    Write-Host "Logs: $(Join-Path $serviceFolder 'logs') ($Name.err.log holds the binary's log lines)"
}

# Lets WinSW write to the Application event log under the service's name
# (it cannot register the source itself, as an unprivileged account).
function Register-EventSource {
    param([Parameter(Mandatory)] [string] $Name)
    try {
        if (-not [System.Diagnostics.EventLog]::SourceExists($Name)) {
            [System.Diagnostics.EventLog]::CreateEventSource($Name, 'Application')
        }
    } catch {
        Write-Warning "no event log source for ${Name}: $_ (the log files are unaffected)"
    }
}

# Stops and removes service $Name and its WinSW copy; with $RemoveData, its
# folder under %ProgramData% too (logs, settings, state).
function Uninstall-RelayService {
    param(
        [Parameter(Mandatory)] [string] $Name,
        [switch] $RemoveData
    )
    if (Get-Service -Name $Name -ErrorAction SilentlyContinue) {
        Stop-RelayService -Name $Name
        Invoke-Sc "delete `"$Name`""
    } else {
        Write-Host "No service named $Name."
    }
    $wrapperFolder = Get-WrapperFolder -Name $Name
    if (Test-Path -LiteralPath $wrapperFolder) {
        Remove-Item -LiteralPath $wrapperFolder -Recurse -Force
    }
    try {
        if ([System.Diagnostics.EventLog]::SourceExists($Name)) {
            [System.Diagnostics.EventLog]::DeleteEventSource($Name)
        }
    } catch {
        Write-Warning "event log source ${Name} left in place: $_"
    }
    $serviceFolder = Get-ServiceFolder -Name $Name
    if ($RemoveData -and (Test-Path -LiteralPath $serviceFolder)) {
        Remove-Item -LiteralPath $serviceFolder -Recurse -Force
        Write-Host "Removed $serviceFolder."
    } elseif (Test-Path -LiteralPath $serviceFolder) {
        Write-Host "Kept $serviceFolder (logs, settings, state); -RemoveData deletes it."
    }
}
